#!/usr/bin/env python3
"""PyTorch SDPA decode attention on the shapes of anybit_cuda_bench's attention section.

One query token per sequence, Llama-3-8B heads (32 query / 8 kv, head_dim 128), contexts
4k / 32k / 128k, batch 1 and 16, f16 and bf16 caches in SDPA's own contiguous
(batch, kv_heads, ctx, head_dim) layout. Each backend is forced in turn (flash, then
memory-efficient, with enable_gqa=True so K/V are not repeated per query head); times are
medians of 7 samples of 20 calls replayed from one CUDA graph, like anybit's figures.
Prints a markdown table; GB/s counts the K and V bytes of the context.

    python3 bench/cuda/sdpa_decode.py [--ctx 4096 32768 131072] [--batch 1 16]
"""
import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HEADS, KV_HEADS, HD, INNER = 32, 8, 128, 20


def time_graph(fn, reps=7):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(INNER):
            fn()
    for _ in range(3):
        g.replay()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000.0 / INNER)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctx", type=int, nargs="+", default=[4096, 32768, 131072])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args()
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print("| attention decode (32/8 heads, hd 128) | cache, kernel | ctx | batch | median us | GB/s |")
    print("|---|---|---|---|---|---|")
    for ctx in args.ctx:
        for batch in args.batch:
            for dt, name in ((torch.float16, "f16"), (torch.bfloat16, "bf16")):
                q = torch.randn(batch, HEADS, 1, HD, device=dev, dtype=dt)
                k = torch.randn(batch, KV_HEADS, ctx, HD, device=dev, dtype=dt)
                v = torch.randn(batch, KV_HEADS, ctx, HD, device=dev, dtype=dt)
                kv_bytes = 2 * k.numel() * k.element_size()
                for backend, bname in ((SDPBackend.FLASH_ATTENTION, "sdpa flash"),
                                       (SDPBackend.EFFICIENT_ATTENTION, "sdpa mem-efficient")):
                    def fn():
                        with sdpa_kernel(backend):
                            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                    try:
                        us = time_graph(fn)
                    except Exception as e:  # a backend that refuses the shape
                        print(f"| attention decode | {name}, {bname} | {ctx} | {batch} | refused: "
                              f"{str(e).splitlines()[0][:80]} | |")
                        continue
                    print(f"| attention decode | {name}, {bname} | {ctx} | {batch} | {us:.1f} | "
                          f"{kv_bytes / us / 1e3:.0f} |", flush=True)
                del q, k, v
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
