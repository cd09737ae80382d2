// The OpenAI API as a user drives it with the official client: completions and
// chat, plain and streamed, stop strings, seeds, logprobs, usage, models, health.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { MODEL, MODEL_PATH, collect, metrics, startServer } from './harness.mjs';

const reference = JSON.parse(readFileSync(`${MODEL_PATH}/reference.json`, 'utf8')).references;

describe('OpenAI API', () => {
  let srv;
  before(async () => { srv = await startServer(['--max-batch', '8']); });
  after(async () => {
    const { code } = await srv.stop();
    assert.equal(code, 0, srv.stderr());
  });

  test('greedy completions match Hugging Face transformers', async () => {
    for (const r of reference) {
      const res = await srv.client.completions.create({
        model: MODEL, prompt: r.prompt, max_tokens: r.greedy_ids.length, temperature: 0, ignore_eos: true,
      });
      assert.equal(res.object, 'text_completion');
      assert.equal(res.model, MODEL);
      assert.equal(res.choices[0].text, r.greedy_text, r.prompt);
      assert.equal(res.choices[0].finish_reason, 'length');
      assert.deepEqual(res.usage, {
        prompt_tokens: r.prompt_ids.length,
        completion_tokens: r.greedy_ids.length,
        total_tokens: r.prompt_ids.length + r.greedy_ids.length,
      });
    }
  });

  test('streamed completion equals the plain one', async () => {
    const r = reference[1];
    const plain = await srv.client.completions.create({ model: MODEL, prompt: r.prompt, max_tokens: 40, temperature: 0 });
    const stream = await srv.client.completions.create({
      model: MODEL, prompt: r.prompt, max_tokens: 40, temperature: 0, stream: true, stream_options: { include_usage: true },
    });
    const got = await collect(stream);
    assert.equal(got.text, plain.choices[0].text);
    assert.equal(got.finish, plain.choices[0].finish_reason);
    assert.ok(got.chunks > 5, `only ${got.chunks} chunks: not streamed`);
    assert.deepEqual(got.usage, plain.usage);
  });

  test('token-id prompts are accepted', async () => {
    const r = reference[0];
    const res = await srv.client.completions.create({
      model: MODEL, prompt: r.prompt_ids, max_tokens: 20, temperature: 0, ignore_eos: true,
    });
    assert.ok(r.greedy_text.startsWith(res.choices[0].text));
    assert.equal(res.usage.prompt_tokens, r.prompt_ids.length);
  });

  test('stop strings end the text before them, streamed or not', async () => {
    const r = reference[0];
    const at = r.greedy_text.indexOf('aware');
    assert.ok(at > 0);
    const params = { model: MODEL, prompt: r.prompt, max_tokens: 60, temperature: 0, stop: ['zzz', 'aware'] };
    const res = await srv.client.completions.create(params);
    assert.equal(res.choices[0].text, r.greedy_text.slice(0, at));
    assert.equal(res.choices[0].finish_reason, 'stop');
    assert.ok(res.usage.completion_tokens < 60);
    const got = await collect(await srv.client.completions.create({ ...params, stream: true }));
    assert.equal(got.text, r.greedy_text.slice(0, at));
    assert.equal(got.finish, 'stop');
    // A single-string stop works too.
    const one = await srv.client.completions.create({ ...params, stop: 'aware' });
    assert.equal(one.choices[0].text, r.greedy_text.slice(0, at));
  });

  test('seeds give identical samples, different seeds differ', async () => {
    const p = { model: MODEL, prompt: 'Once upon a time', max_tokens: 40, temperature: 0.9, top_p: 0.95, ignore_eos: true };
    const a = await srv.client.completions.create({ ...p, seed: 42 });
    const b = await srv.client.completions.create({ ...p, seed: 42 });
    const c = await srv.client.completions.create({ ...p, seed: 7 });
    assert.equal(a.choices[0].text, b.choices[0].text);
    assert.notEqual(a.choices[0].text, c.choices[0].text);
    const s = await collect(await srv.client.completions.create({ ...p, seed: 42, stream: true }));
    assert.equal(s.text, a.choices[0].text);
    // Chat with a seed, too.
    const msgs = [{ role: 'user', content: 'Tell me a story.' }];
    const x = await srv.client.chat.completions.create({ model: MODEL, messages: msgs, max_tokens: 30, temperature: 1, seed: 5 });
    const y = await srv.client.chat.completions.create({ model: MODEL, messages: msgs, max_tokens: 30, temperature: 1, seed: 5 });
    assert.equal(x.choices[0].message.content, y.choices[0].message.content);
  });

  test('chat completions use ChatML (tiny-llama has no template) after BOS, plain and streamed', async () => {
    const messages = [
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: 'What is a kernel?' },
    ];
    const res = await srv.client.chat.completions.create({ model: MODEL, messages, max_tokens: 24, temperature: 0 });
    assert.equal(res.object, 'chat.completion');
    assert.equal(res.choices[0].message.role, 'assistant');
    assert.ok(res.choices[0].message.content.length > 0);
    // The prompt is the ChatML rendering, tokenized: the same text as a completion gives the same answer.
    const chatml = '<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is a kernel?<|im_end|>\n' +
      '<|im_start|>assistant\n';
    const same = await srv.client.completions.create({ model: MODEL, prompt: chatml, max_tokens: 24, temperature: 0 });
    assert.equal(res.choices[0].message.content, same.choices[0].text);
    assert.equal(res.usage.prompt_tokens, same.usage.prompt_tokens);  // BOS included in both

    const stream = await srv.client.chat.completions.create({
      model: MODEL, messages, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true },
    });
    let role = null;
    let text = '';
    let finish = null;
    let usage = null;
    for await (const chunk of stream) {
      assert.equal(chunk.object, 'chat.completion.chunk');
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) {
        if (c.delta.role) role = c.delta.role;
        text += c.delta.content ?? '';
        if (c.finish_reason) finish = c.finish_reason;
      }
    }
    assert.equal(role, 'assistant');
    assert.equal(text, res.choices[0].message.content);
    assert.equal(finish, res.choices[0].finish_reason);
    assert.deepEqual(usage, res.usage);
    // Content given as text parts is the same message.
    const parts = await srv.client.chat.completions.create({
      model: MODEL, max_tokens: 24, temperature: 0,
      messages: [messages[0], { role: 'user', content: [{ type: 'text', text: 'What is ' }, { type: 'text', text: 'a kernel?' }] }],
    });
    assert.equal(parts.choices[0].message.content, res.choices[0].message.content);
  });

  test('logprobs: chosen token and alternatives', async () => {
    const res = await srv.client.completions.create({
      model: MODEL, prompt: reference[0].prompt, max_tokens: 8, temperature: 0, logprobs: 3, ignore_eos: true,
    });
    const lp = res.choices[0].logprobs;
    assert.equal(lp.tokens.length, 8);
    assert.equal(lp.tokens.join(''), res.choices[0].text);
    for (let i = 0; i < 8; i++) {
      assert.ok(lp.token_logprobs[i] <= 0);
      const alts = Object.values(lp.top_logprobs[i]);
      assert.ok(alts.length >= 1 && alts.length <= 3);
      // Greedy: the chosen token is the most likely one.
      assert.ok(Math.abs(Math.max(...alts) - lp.token_logprobs[i]) < 1e-4);
    }
    assert.deepEqual(lp.text_offset.slice(0, 2), [0, lp.tokens[0].length]);

    const chat = await srv.client.chat.completions.create({
      model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 2,
    });
    const content = chat.choices[0].logprobs.content;
    assert.equal(content.length, chat.usage.completion_tokens);
    for (const t of content) {
      assert.equal(t.top_logprobs.length, 2);
      assert.equal(t.top_logprobs[0].logprob, t.logprob);
      assert.ok(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob);
      if (!t.token.includes('\ufffd')) assert.deepEqual(t.bytes, [...Buffer.from(t.token, 'utf8')]);
    }
    // Streamed chunks carry their tokens' logprobs.
    let n = 0;
    const s = await srv.client.chat.completions.create({
      model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 6, temperature: 0, logprobs: true, stream: true,
    });
    for await (const chunk of s) for (const c of chunk.choices) n += c.logprobs?.content?.length ?? 0;
    assert.equal(n, content.length);
  });

  test('max_tokens defaults: 16 for completions', async () => {
    const res = await srv.client.completions.create({ model: MODEL, prompt: 'Hello', temperature: 0, ignore_eos: true });
    assert.equal(res.usage.completion_tokens, 16);
  });

  test('models, health and metrics', async () => {
    const models = [];
    for await (const m of srv.client.models.list()) models.push(m);
    assert.deepEqual(models.map((m) => m.id), [MODEL]);
    const one = await srv.client.models.retrieve(MODEL);
    assert.equal(one.id, MODEL);
    const health = await fetch(`${srv.url}/health`);
    assert.equal(health.status, 200);
    assert.deepEqual(await health.json(), { status: 'ok' });
    const m = await metrics(srv.url);
    for (const k of ['anybit_requests_waiting', 'anybit_requests_running', 'anybit_kv_blocks_used', 'anybit_kv_blocks_free',
      'anybit_tokens_per_second', 'anybit_time_to_first_token_seconds_count', 'anybit_inter_token_latency_seconds_count'])
      assert.ok(k in m, `${k} missing from /metrics`);
    assert.ok(m.anybit_time_to_first_token_seconds_count > 10);
    assert.ok(m.anybit_inter_token_latency_seconds_count > 100);
    assert.equal(m['anybit_time_to_first_token_seconds_bucket{le="+Inf"}'], m.anybit_time_to_first_token_seconds_count);
    assert.equal(m.anybit_kv_blocks_used, 0);
    assert.equal(m.anybit_kv_blocks_free, m.anybit_kv_blocks_total);
    assert.ok(m.anybit_generation_tokens_total > 100);
  });
});

describe('serve --shape: random weights of a named shape, for load benchmarks', () => {
  test('serves a random 3-bit model with the embedded tokenizer, deterministically', async () => {
    const srv = await startServer(['--shape', 'tiny', '--bits', '3'], { withModel: false });
    try {
      const ids = [];
      for await (const m of srv.client.models.list()) ids.push(m.id);
      assert.deepEqual(ids, ['tiny-w3g128']);
      const ask = () => srv.client.completions.create({
        model: 'tiny-w3g128', prompt: 'The kernel', max_tokens: 8, temperature: 0, ignore_eos: true,
      });
      const a = await ask(), b = await ask();
      assert.equal(a.usage.completion_tokens, 8);
      assert.ok(a.usage.prompt_tokens >= 2, JSON.stringify(a.usage));
      assert.ok(a.choices[0].text.length > 0);
      assert.equal(b.choices[0].text, a.choices[0].text);
    } finally {
      const { code } = await srv.stop();
      assert.equal(code, 0, srv.stderr());
    }
  });
});
