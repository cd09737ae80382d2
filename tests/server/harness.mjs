// Starts `anybit serve` on a free port and hands out an official OpenAI client for it.
// ANYBIT_BIN and ANYBIT_MODEL come from run.sh (ctest passes the built binary).
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import OpenAI from 'openai';

export const BIN = process.env.ANYBIT_BIN;
export const MODEL_PATH = process.env.ANYBIT_MODEL;
export const MODEL = 'tiny-llama';
if (!BIN || !MODEL_PATH) throw new Error('set ANYBIT_BIN and ANYBIT_MODEL (tests/server/run.sh does)');

// withModel: false leaves out `-m` (for `serve --shape`, random weights).
export async function startServer(extraArgs = [], { startTimeoutMs = 120_000, withModel = true } = {}) {
  const args = ['serve', ...(withModel ? ['-m', MODEL_PATH] : []), '--port', '0', '-t', '1', ...extraArgs];
  const proc = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr += d; });
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const url = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`server did not start in time: ${stderr}`)), startTimeoutMs);
    proc.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening on (http:\/\/[^\s]+)/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`server exited (${code}): ${stderr}`)); });
  });
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 600_000 });
  return {
    url,
    proc,
    client,
    exited,
    stderr: () => stderr,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      return exited;
    },
  };
}

// /metrics as { name: value } (histogram buckets keep their label text in the name).
export async function metrics(url) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const out = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return out;
}

export function residentBytes(pid) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
  return m ? Number(m[1]) * 1024 : 0;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls until pred(metrics) holds; returns the last metrics seen.
export async function waitForMetrics(url, pred, timeoutMs = 30_000) {
  const t0 = Date.now();
  let m;
  while (Date.now() - t0 < timeoutMs) {
    m = await metrics(url);
    if (pred(m)) return m;
    await sleep(100);
  }
  return m;
}

// Deterministic pseudo-random prompts made of ordinary vocabulary ids.
export function tokenPrompt(seed, n) {
  let x = (seed * 2654435761) >>> 0;
  const ids = [0];  // BOS
  for (let i = 1; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    ids.push(300 + ((x >>> 8) % 7000));
  }
  return ids;
}

// Collects a streamed completion or chat completion into text + finish reason.
export async function collect(stream) {
  let text = '';
  let finish = null;
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.text ?? c.delta?.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  return { text, finish, usage, chunks };
}
