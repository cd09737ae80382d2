// 64 concurrent streams: every one completes, and each batched greedy result
// equals the same request run alone. The KV cache is deliberately too small for
// all of them at once, so preemption (free and recompute) happens along the way.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { MODEL, collect, metrics, startServer, tokenPrompt, waitForMetrics } from './harness.mjs';

const N = 64;

function request(i) {
  // Prompts of 5..60 tokens; every 8th shares its first 32 tokens with request 0
  // (prefix sharing when they run together); seeded sampling for a quarter of them.
  let prompt = tokenPrompt(1000 + i, 5 + ((i * 37) % 56));
  if (i % 8 === 0 && i > 0) prompt = [...tokenPrompt(1000, 33).slice(0, 32), ...prompt.slice(1, 9)];
  const sampled = i % 4 === 3;
  return {
    model: MODEL, prompt, max_tokens: 12 + (i % 5) * 6, ignore_eos: true,
    temperature: sampled ? 0.8 : 0, seed: sampled ? i : undefined,
  };
}

describe('64 concurrent streams', () => {
  let srv;
  // A 512-token context and 8 MiB of KV = 64 blocks of 16 positions, while the 64
  // requests together need about 260 and one alone up to 6.
  before(async () => {
    srv = await startServer(['-c', '512', '--max-batch', '64', '--max-queue', '64', '--kv-memory', '8M']);
  });
  after(async () => {
    const { code } = await srv.stop();
    assert.equal(code, 0, srv.stderr());
  });

  test('all complete with the results they get alone', async () => {
    const alone = [];
    for (let i = 0; i < N; i++) {
      const r = await srv.client.completions.create(request(i));
      alone.push(r.choices[0].text);
      assert.equal(r.usage.completion_tokens, request(i).max_tokens);
    }
    const before = await metrics(srv.url);
    const t0 = Date.now();
    const results = await Promise.all(Array.from({ length: N }, async (_, i) =>
      collect(await srv.client.completions.create({ ...request(i), stream: true, stream_options: { include_usage: true } }))));
    const seconds = (Date.now() - t0) / 1000;
    for (let i = 0; i < N; i++) {
      assert.equal(results[i].finish, 'length', `request ${i}`);
      assert.equal(results[i].usage.completion_tokens, request(i).max_tokens, `request ${i}`);
      assert.equal(results[i].text, alone[i], `request ${i}: batched output differs from the solo one`);
    }
    const m = await waitForMetrics(srv.url, (x) => x.anybit_requests_running === 0 && x.anybit_kv_blocks_used === 0);
    assert.equal(m.anybit_kv_blocks_used, 0, 'KV blocks leaked');
    assert.ok(m.anybit_preemptions_total > before.anybit_preemptions_total, 'the small KV cache should have forced preemption');
    const tokens = results.reduce((s, r) => s + r.usage.completion_tokens, 0);
    console.log(`64 streams: ${tokens} tokens in ${seconds.toFixed(1)} s, ` +
      `${m.anybit_preemptions_total - before.anybit_preemptions_total} preemptions, ` +
      `${m.anybit_prefix_cache_hit_tokens_total} prefix-hit tokens`);
  });
});
