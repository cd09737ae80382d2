#!/usr/bin/env python3
"""The Hugging Face transformers baseline of the serving benchmark (docs/PERFORMANCE.md).

A static batch of B requests through `generate` (greedy, bf16, sdpa attention, random
weights of a named shape), every request PROMPT tokens in and exactly GEN tokens out,
so its total tokens/s compares with a server's under B concurrent clients. Time to first
token is the time of a 1-token `generate` of the same batch (its prefill). One JSON line
per (batch, run), in the fields bench/serve/summarize.mjs reads, label "hf-transformers".

  python3 bench/serve/hf_batch.py --shape llama-8b --batches 1 16 64 --runs 3
"""
import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

# The named shapes of src/runtime/random_model.cpp.
SHAPES = {
    "llama-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=64, intermediate_size=8192),
    "llama-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, intermediate_size=14336),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="llama-8b", choices=sorted(SHAPES))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=128)
    a = p.parse_args()

    cfg = LlamaConfig(vocab_size=8192, max_position_embeddings=4096, rope_theta=500000.0, rms_norm_eps=1e-5,
                      tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=1,
                      **SHAPES[a.shape])
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    gen = torch.Generator(device="cuda").manual_seed(1)

    def generate(ids, n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=1)
        torch.cuda.synchronize()
        assert out.shape[1] == ids.shape[1] + n, out.shape
        return time.perf_counter() - t0

    for b in a.batches:
        ids = torch.randint(300, 7300, (b, a.prompt_tokens), device="cuda", generator=gen)
        ids[:, 0] = 0
        generate(ids, 8)  # warm-up
        for _ in range(a.runs):
            ttft = generate(ids, 1)
            wall = generate(ids, a.max_tokens)
            print(json.dumps({
                "label": "hf-transformers", "clients": b, "requests": b, "prompt_tokens": a.prompt_tokens,
                "max_tokens": a.max_tokens, "wall_s": round(wall, 3),
                "tokens_per_s": round(b * a.max_tokens / wall, 1),
                "ttft_p50_ms": round(ttft * 1000, 1), "ttft_p99_ms": round(ttft * 1000, 1),
                "itl_p50_ms": round((wall - ttft) / (a.max_tokens - 1) * 1000, 2),
            }), flush=True)


if __name__ == "__main__":
    main()
