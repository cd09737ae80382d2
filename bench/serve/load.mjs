#!/usr/bin/env node
// Load generator for OpenAI-compatible servers (anybit serve, llama.cpp's
// llama-server): N concurrent clients, each sending R streamed /v1/completions
// requests one after another. Prompts are token-id arrays so both servers see
// exactly the same tokens; ignore_eos makes every request generate max_tokens.
// Prints one JSON line: total tokens/s, time to first token p50/p99, ...
//
//   node bench/serve/load.mjs --url http://127.0.0.1:8080 --clients 8 --requests 4 \
//        --prompt-tokens 128 --max-tokens 128 [--model NAME] [--label TEXT]
// Node 18+, no dependencies.

function args() {
  const a = {
    url: 'http://127.0.0.1:8080', clients: 4, requests: 4, 'prompt-tokens': 128, 'max-tokens': 128,
    model: '', label: '', seed: 1, vocab: 7000,
  };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i].replace(/^--/, '');
    if (!(k in a)) throw new Error(`unknown option --${k}`);
    a[k] = typeof a[k] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
  }
  return a;
}

// Deterministic prompts of ordinary token ids (BOS first), different per request.
function prompt(seed, n, vocab) {
  let x = (seed * 2654435761) >>> 0;
  const ids = [0];
  for (let i = 1; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    ids.push(300 + ((x >>> 8) % vocab));
  }
  return ids;
}

function quantile(sorted, q) {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos), hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

async function one(a, id) {
  const body = {
    prompt: prompt(a.seed * 100003 + id, a['prompt-tokens'], a.vocab), max_tokens: a['max-tokens'],
    temperature: 0, stream: true, ignore_eos: true,
  };
  if (a.model) body.model = a.model;
  const t0 = performance.now();
  const res = await fetch(`${a.url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  let ttft = null, last = t0, chunks = 0, buf = '';
  const gaps = [];
  const decoder = new TextDecoder();
  for await (const part of res.body) {
    buf += decoder.decode(part, { stream: true });
    let nl;
    while ((nl = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, nl);
      buf = buf.slice(nl + 2);
      for (const line of event.split('\n')) {
        if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
        const d = JSON.parse(line.slice(6));
        if (d.error) throw new Error(JSON.stringify(d.error));
        const text = d.choices?.[0]?.text ?? d.content;
        if (text === undefined || text === '') continue;
        const now = performance.now();
        if (ttft === null) ttft = now - t0;
        else gaps.push(now - last);
        last = now;
        chunks++;
      }
    }
  }
  return { ttft, total: performance.now() - t0, chunks, gaps };
}

async function main() {
  const a = args();
  const results = [];
  const t0 = performance.now();
  await Promise.all(Array.from({ length: a.clients }, async (_, c) => {
    for (let r = 0; r < a.requests; r++) results.push(await one(a, c * a.requests + r));
  }));
  const wall = (performance.now() - t0) / 1000;
  const ttft = results.map((r) => r.ttft).sort((x, y) => x - y);
  const gaps = results.flatMap((r) => r.gaps).sort((x, y) => x - y);
  const tokens = results.length * a['max-tokens'];
  console.log(JSON.stringify({
    label: a.label, clients: a.clients, requests: results.length, prompt_tokens: a['prompt-tokens'],
    max_tokens: a['max-tokens'], wall_s: +wall.toFixed(3),
    tokens_per_s: +(tokens / wall).toFixed(1),
    ttft_p50_ms: +quantile(ttft, 0.5).toFixed(1), ttft_p99_ms: +quantile(ttft, 0.99).toFixed(1),
    itl_p50_ms: +quantile(gaps, 0.5).toFixed(2), itl_p99_ms: +quantile(gaps, 0.99).toFixed(2),
    // Chunks that carried text: a server that merges tokens into chunks shows fewer.
    text_chunks_per_request: +(results.reduce((s, r) => s + r.chunks, 0) / results.length).toFixed(1),
  }));
}

main().catch((e) => { console.error(e); process.exit(1); });
