// Faults: malformed requests get OpenAI-shaped 4xx errors and the server keeps
// serving; a client that disconnects mid-stream gets its KV blocks freed; a full
// queue answers 429; 500 requests in a row do not grow resident memory; SIGTERM
// drains in-flight requests and exits 0. Plus prefix sharing seen from outside.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { MODEL, metrics, residentBytes, sleep, startServer, tokenPrompt, waitForMetrics } from './harness.mjs';

async function post(url, path, body, headers = { 'content-type': 'application/json' }) {
  const res = await fetch(`${url}${path}`, { method: 'POST', headers, body });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, json, text };
}

function assertOpenAIError(r, status, param) {
  assert.equal(r.status, status, r.text);
  assert.ok(r.json && r.json.error, `not an OpenAI error body: ${r.text}`);
  assert.equal(typeof r.json.error.message, 'string');
  assert.ok(r.json.error.message.length > 0);
  assert.equal(typeof r.json.error.type, 'string');
  assert.ok('param' in r.json.error && 'code' in r.json.error);
  if (param !== undefined) assert.equal(r.json.error.param, param, r.text);
}

describe('faults', () => {
  let srv;
  before(async () => { srv = await startServer(['-c', '256', '--max-batch', '4', '--max-queue', '8']); });
  after(async () => {
    const { code } = await srv.stop();
    assert.equal(code, 0, srv.stderr());
  });

  test('malformed requests get 4xx errors in OpenAI shape', async () => {
    const u = srv.url;
    const C = '/v1/completions';
    const chat = '/v1/chat/completions';
    const j = (o) => JSON.stringify(o);
    assertOpenAIError(await post(u, C, '{"prompt": "x",'), 400);
    assertOpenAIError(await post(u, C, ''), 400);
    assertOpenAIError(await post(u, C, '[1, 2]'), 400);
    assertOpenAIError(await post(u, C, '['.repeat(100000)), 400);
    assertOpenAIError(await post(u, C, j({ prompt: 'x', max_tokens: 'ten' })), 400, 'max_tokens');
    assertOpenAIError(await post(u, C, j({ prompt: 'x', max_tokens: 2.5 })), 400, 'max_tokens');
    assertOpenAIError(await post(u, C, j({ prompt: 'x', max_tokens: 0 })), 400, 'max_tokens');
    assertOpenAIError(await post(u, C, j({ prompt: 'x', temperature: 'hot' })), 400, 'temperature');
    assertOpenAIError(await post(u, C, j({ prompt: 'x', temperature: 3 })), 400, 'temperature');
    assertOpenAIError(await post(u, C, j({ prompt: 'x', top_p: 0 })), 400, 'top_p');
    assertOpenAIError(await post(u, C, j({ prompt: 'x', stream: 'yes' })), 400, 'stream');
    assertOpenAIError(await post(u, C, j({ prompt: 'x', stop: [1] })), 400, 'stop');
    assertOpenAIError(await post(u, C, j({ prompt: 'x', stop: ['a', 'b', 'c', 'd', 'e'] })), 400, 'stop');
    assertOpenAIError(await post(u, C, j({ prompt: 'x', seed: 'abc' })), 400, 'seed');
    assertOpenAIError(await post(u, C, j({ prompt: 'x', n: 2 })), 400, 'n');
    assertOpenAIError(await post(u, C, j({ prompt: 'x', logprobs: 50 })), 400, 'logprobs');
    assertOpenAIError(await post(u, C, j({ prompt: 42 })), 400, 'prompt');
    assertOpenAIError(await post(u, C, j({ prompt: [1, 'a'] })), 400, 'prompt');
    assertOpenAIError(await post(u, C, j({ prompt: [1, 99999] })), 400, 'prompt');
    assertOpenAIError(await post(u, C, j({ max_tokens: 5 })), 400, 'prompt');
    // Unknown model: 404 model_not_found.
    const unknown = await post(u, C, j({ model: 'gpt-17', prompt: 'x' }));
    assertOpenAIError(unknown, 404, 'model');
    assert.equal(unknown.json.error.code, 'model_not_found');
    // max_tokens beyond the context (256 here), and a prompt longer than the context.
    const long = await post(u, C, j({ prompt: 'Hello', max_tokens: 300 }));
    assertOpenAIError(long, 400, 'max_tokens');
    assert.equal(long.json.error.code, 'context_length_exceeded');
    const huge = await post(u, C, j({ prompt: tokenPrompt(1, 300), max_tokens: 5 }));
    assertOpenAIError(huge, 400, 'prompt');
    assert.equal(huge.json.error.code, 'context_length_exceeded');
    // Chat: empty or malformed messages.
    assertOpenAIError(await post(u, chat, j({ messages: [] })), 400, 'messages');
    assertOpenAIError(await post(u, chat, j({ messages: 'hi' })), 400, 'messages');
    assertOpenAIError(await post(u, chat, j({})), 400, 'messages');
    assertOpenAIError(await post(u, chat, j({ messages: [{ role: 'user' }] })), 400, 'messages[0].content');
    assertOpenAIError(await post(u, chat, j({ messages: [{ role: 'wizard', content: 'x' }] })), 400, 'messages[0].role');
    assertOpenAIError(await post(u, chat, j({ messages: [{ role: 'user', content: [{ type: 'image_url' }] }] })), 400);
    assertOpenAIError(await post(u, chat, j({ messages: [{ role: 'user', content: 'x' }], top_logprobs: 3 })), 400, 'top_logprobs');
    // No such route; wrong method.
    const nope = await fetch(`${u}/v1/nothing`);
    assert.equal(nope.status, 404);
    assert.ok((await nope.json()).error);
    assert.equal((await fetch(`${u}/v1/completions`)).status, 404);
    // The official client sees these as typed errors.
    await assert.rejects(srv.client.completions.create({ model: 'nope', prompt: 'x' }), OpenAI.NotFoundError);
    await assert.rejects(srv.client.chat.completions.create({ model: MODEL, messages: [] }), OpenAI.BadRequestError);
    // And the server still serves.
    const ok = await srv.client.completions.create({ model: MODEL, prompt: 'Hello', max_tokens: 4, temperature: 0 });
    assert.ok(ok.choices[0].text.length > 0);
    const m = await metrics(u);
    assert.ok(m.anybit_http_client_errors_total >= 30);
  });

  test('a client that disconnects mid-stream frees its KV blocks', async () => {
    const total = (await metrics(srv.url)).anybit_kv_blocks_total;
    const controller = new AbortController();
    const stream = await srv.client.completions.create(
      { model: MODEL, prompt: tokenPrompt(3, 100), max_tokens: 150, temperature: 0, ignore_eos: true, stream: true },
      { signal: controller.signal });
    let chunks = 0;
    try {
      for await (const _ of stream) {
        if (++chunks === 5) {
          const m = await metrics(srv.url);
          assert.equal(m.anybit_requests_running, 1);
          assert.ok(m.anybit_kv_blocks_used >= 7, `${m.anybit_kv_blocks_used} blocks for 105 positions`);
          controller.abort();  // the connection closes under the client
          // Chunks that had already arrived may still be yielded after the abort: stop reading.
          break;
        }
      }
    } catch (e) {
      assert.match(String(e?.name), /Abort/);
    }
    assert.equal(chunks, 5);
    const m = await waitForMetrics(srv.url, (x) => x.anybit_kv_blocks_free === total && x.anybit_requests_running === 0);
    assert.equal(m.anybit_kv_blocks_free, total, 'the disconnected stream kept its KV blocks');
    assert.equal(m.anybit_requests_running, 0);
    assert.ok(m.anybit_requests_cancelled_total >= 1);
    assert.ok(m.anybit_stream_disconnects_total >= 1);
    assert.ok(m.anybit_generation_tokens_total < 1000);
  });

  test('a full queue answers 429 and the accepted requests complete', async () => {
    // max-batch 4 + max-queue 8: of 24 simultaneous requests, some must be refused.
    const reqs = Array.from({ length: 24 }, (_, i) => srv.client.completions.create(
      { model: MODEL, prompt: tokenPrompt(50 + i, 20), max_tokens: 40, temperature: 0, ignore_eos: true }));
    const settled = await Promise.allSettled(reqs);
    const ok = settled.filter((s) => s.status === 'fulfilled');
    const refused = settled.filter((s) => s.status === 'rejected');
    assert.ok(refused.length > 0, 'nothing was refused');
    for (const r of refused) {
      assert.ok(r.reason instanceof OpenAI.RateLimitError, String(r.reason));
      assert.equal(r.reason.status, 429);
      assert.equal(r.reason.error?.code ?? r.reason.code, 'queue_full');
    }
    // At least the queue's worth is accepted; how many the engine has already moved into
    // the running batch when the burst arrives depends on timing.
    assert.ok(ok.length >= 8, `only ${ok.length} accepted`);
    for (const r of ok) assert.equal(r.value.usage.completion_tokens, 40);
    const m = await metrics(srv.url);
    assert.equal(m.anybit_requests_rejected_total, refused.length);
  });

  test('prefix sharing: a second request with the same prompt reuses the first one\'s blocks', async () => {
    const prompt = tokenPrompt(77, 64);
    const before = (await metrics(srv.url)).anybit_prefix_cache_hit_tokens_total;
    const first = await srv.client.completions.create(
      { model: MODEL, prompt, max_tokens: 120, temperature: 0, ignore_eos: true, stream: true });
    const it = first[Symbol.asyncIterator]();
    await it.next();  // the first request's prompt is in the cache now
    const second = await srv.client.completions.create({ model: MODEL, prompt, max_tokens: 10, temperature: 0 });
    const after = (await metrics(srv.url)).anybit_prefix_cache_hit_tokens_total;
    assert.equal(after - before, 48, 'three full 16-token blocks (the last must be computed for its logits)');
    let text = '';
    for (let r = await it.next(); !r.done; r = await it.next()) text += r.value.choices[0]?.text ?? '';
    assert.ok(text.length > 0);
    const alone = await srv.client.completions.create({ model: MODEL, prompt, max_tokens: 10, temperature: 0 });
    assert.equal(second.choices[0].text, alone.choices[0].text);
  });

  test('500 requests in a row do not grow resident memory', async () => {
    const one = (i) => srv.client.completions.create({
      model: MODEL, prompt: `Request number ${i} says`, max_tokens: 3, temperature: 0.5, seed: i,
    });
    for (let i = 0; i < 50; i++) await one(i);  // warm up allocator pools and thread stacks
    const rss0 = residentBytes(srv.proc.pid);
    for (let i = 0; i < 500; i++) {
      if (i % 5 === 4) {
        // Mix in streams and errors too.
        const s = await srv.client.chat.completions.create(
          { model: MODEL, messages: [{ role: 'user', content: `hi ${i}` }], max_tokens: 3, stream: true });
        for await (const _ of s);
        await post(srv.url, '/v1/completions', '{"prompt": 5}');
      } else {
        await one(i);
      }
    }
    const rss1 = residentBytes(srv.proc.pid);
    const growth = rss1 - rss0;
    console.log(`resident memory: ${(rss0 / 1048576).toFixed(1)} MiB -> ${(rss1 / 1048576).toFixed(1)} MiB`);
    assert.ok(growth < 4 * 1048576, `resident memory grew by ${(growth / 1048576).toFixed(1)} MiB over 500 requests`);
    const m = await metrics(srv.url);
    assert.equal(m.anybit_kv_blocks_used, 0);
  });
});

describe('shutdown', () => {
  test('SIGTERM finishes short requests, cancels long ones, exits 0', async () => {
    const srv = await startServer(['--shutdown-grace', '2']);
    const short = srv.client.completions.create({ model: MODEL, prompt: 'Hi', max_tokens: 8, temperature: 0, ignore_eos: true });
    const long = srv.client.completions.create(
      { model: MODEL, prompt: 'Hi', max_tokens: 1900, temperature: 0, ignore_eos: true, stream: true });
    const longDone = (async () => {
      const s = await long;
      let n = 0;
      try {
        for await (const _ of s) n++;
        return { n, error: null };
      } catch (e) {
        return { n, error: e };
      }
    })();
    await waitForMetrics(srv.url, (m) => m.anybit_requests_running === 2 || m.anybit_generation_tokens_total > 10);
    const t0 = Date.now();
    srv.proc.kill('SIGTERM');
    const { code } = await srv.exited;
    assert.equal(code, 0, srv.stderr());
    assert.ok(Date.now() - t0 < 15_000, 'shutdown took too long');
    assert.equal((await short).usage.completion_tokens, 8);
    const l = await longDone;
    assert.ok(l.error instanceof OpenAI.APIError, `the long stream should end with an error event, got ${l.error}`);
    assert.match(String(l.error.message), /shutting down/);
    assert.match(srv.stderr(), /SIGTERM/);
    await assert.rejects(fetch(`${srv.url}/health`));
  });
});
