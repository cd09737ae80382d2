#!/usr/bin/env python3
"""Load generator for OpenAI-compatible servers, the Python twin of load.mjs.

The GPU machine has Python but no Node, so the H100 serving benchmark uses this one.
Same prompts (token-id arrays from the same generator), same requests and the same
JSON line as load.mjs, so bench/serve/summarize.mjs reads both:

  python3 bench/serve/load.py --url http://127.0.0.1:8080 --clients 16 --requests 4 \
      --prompt-tokens 128 --max-tokens 128 [--label TEXT]

Standard library only: one thread per client, http.client with SSE parsing.
"""
import argparse
import http.client
import json
import sys
import threading
import time
import urllib.parse


def prompt(seed, n, vocab):
    # Mirrors load.mjs: a 32-bit LCG over the multiplicative hash of the seed.
    x = (seed * 2654435761) & 0xFFFFFFFF
    ids = [0]
    for _ in range(1, n):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        ids.append(300 + ((x >> 8) % vocab))
    return ids


def quantile(sorted_xs, q):
    if not sorted_xs:
        return float("nan")
    pos = (len(sorted_xs) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def one(a, rid):
    body = {
        "prompt": prompt(a.seed * 100003 + rid, a.prompt_tokens, a.vocab),
        "max_tokens": a.max_tokens, "temperature": 0, "stream": True, "ignore_eos": True,
    }
    if a.model:
        body["model"] = a.model
    u = urllib.parse.urlparse(a.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"})
    res = conn.getresponse()
    if res.status != 200:
        raise RuntimeError(f"HTTP {res.status}: {res.read()[:300]!r}")
    ttft, last, chunks, gaps = None, t0, 0, []
    for raw in res:  # SSE: one "data: {...}" line per event
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        d = json.loads(line[6:])
        if d.get("error"):
            raise RuntimeError(json.dumps(d["error"]))
        choices = d.get("choices") or [{}]
        text = choices[0].get("text", d.get("content"))
        if not text:
            continue
        now = time.perf_counter()
        if ttft is None:
            ttft = (now - t0) * 1000
        else:
            gaps.append((now - last) * 1000)
        last = now
        chunks += 1
    conn.close()
    return {"ttft": ttft, "chunks": chunks, "gaps": gaps}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--model", default="")
    p.add_argument("--label", default="")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--vocab", type=int, default=7000)
    a = p.parse_args()

    results, errors, lock = [], [], threading.Lock()

    def client(c):
        for r in range(a.requests):
            try:
                out = one(a, c * a.requests + r)
            except Exception as e:  # reported below; the run counts as failed
                with lock:
                    errors.append(str(e))
                return
            with lock:
                results.append(out)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        print(f"{len(errors)} request(s) failed, first: {errors[0]}", file=sys.stderr)
        sys.exit(1)
    ttft = sorted(r["ttft"] for r in results if r["ttft"] is not None)
    gaps = sorted(g for r in results for g in r["gaps"])
    tokens = len(results) * a.max_tokens
    print(json.dumps({
        "label": a.label, "clients": a.clients, "requests": len(results),
        "prompt_tokens": a.prompt_tokens, "max_tokens": a.max_tokens, "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_ms": round(quantile(ttft, 0.5), 1), "ttft_p99_ms": round(quantile(ttft, 0.99), 1),
        "itl_p50_ms": round(quantile(gaps, 0.5), 2), "itl_p99_ms": round(quantile(gaps, 0.99), 2),
        "text_chunks_per_request": round(sum(r["chunks"] for r in results) / len(results), 1),
    }), flush=True)


if __name__ == "__main__":
    main()
