#!/usr/bin/env node
// Medians per (server, clients) of bench/serve/load.mjs / load.py / hf_batch.py JSON
// lines, and the ratios of anybit to each peer, as a Markdown table.
//   node bench/serve/summarize.mjs results.jsonl
import { readFileSync } from 'node:fs';

const all = readFileSync(process.argv[2], 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
const rows = all.filter((r) => !r.failed);
for (const f of all.filter((r) => r.failed)) console.log(`failed run: ${f.failed}, ${f.clients} clients: ${f.error}`);
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const groups = new Map();
for (const r of rows) {
  const k = `${r.label}|${r.clients}`;
  if (!groups.has(k)) groups.set(k, []);
  groups.get(k).push(r);
}
const med = {};
for (const [k, rs] of groups) {
  med[k] = {
    n: rs.length,
    tps: median(rs.map((r) => r.tokens_per_s)),
    p50: median(rs.map((r) => r.ttft_p50_ms)),
    p99: median(rs.map((r) => r.ttft_p99_ms)),
    itl: median(rs.map((r) => r.itl_p50_ms)),
  };
}
const clients = [...new Set(rows.map((r) => r.clients))].sort((a, b) => a - b);
const f = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '–');
console.log('| clients | server | runs | tokens/s | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) |');
console.log('|---:|---|---:|---:|---:|---:|---:|');
for (const c of clients) {
  const peers = ['llama-server', 'hf-transformers'];
  for (const label of ['anybit', ...peers]) {
    const m = med[`${label}|${c}`];
    if (m) console.log(`| ${c} | ${label} | ${m.n} | ${f(m.tps)} | ${f(m.p50)} | ${f(m.p99)} | ${f(m.itl, 2)} |`);
  }
  const a = med[`anybit|${c}`];
  for (const peer of peers) {
    const l = med[`${peer}|${c}`];
    if (a && l)
      console.log(`| ${c} | **anybit / ${peer}** | | **${f(a.tps / l.tps, 2)}×** | ${f(a.p50 / l.p50, 2)}× | ` +
        `${f(a.p99 / l.p99, 2)}× | ${f(a.itl / l.itl, 2)}× |`);
  }
}
