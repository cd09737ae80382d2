// The continuous-batching scheduler on the real tiny-llama: batched results equal
// solo ones (greedy and seeded), preemption under a tiny KV budget, chunked
// prefill, prefix sharing refcounts, cancellation, the queue bound, and the
// engine thread's shutdown.
#include <gtest/gtest.h>

#include <omp.h>

#include <cstring>
#include <random>
#include <thread>

#include "formats/model_loader.h"
#include "runtime/generate.h"
#include "runtime/scheduler.h"

using namespace anybit;

namespace {

struct Tiny {
  // ctest runs two test processes at once on a 2-core machine: two OpenMP threads
  // each would oversubscribe it badly (every parallel region waits for a descheduled thread).
  Tiny() { omp_set_num_threads(1); }
  ModelFiles files = load_model_files(std::string(ANYBIT_SOURCE_DIR) + "/models/tiny-llama");
  LlamaModel model{files.config, files.weights};
};

Tiny& tiny() {
  static Tiny t;
  return t;
}

std::vector<int32_t> random_prompt(std::mt19937& rng, int64_t n) {
  std::vector<int32_t> p{tiny().files.config.bos_id};
  // Ids from the middle of the vocabulary: ordinary text tokens, no specials.
  for (int64_t i = 1; i < n; ++i) p.push_back(int32_t(300 + rng() % 7000));
  return p;
}

struct Result {
  std::string text;
  std::vector<int32_t> ids;
  std::string finish;
  int64_t completion = 0;
};

// Drains everything a request has produced so far into `r`; true once finished.
bool drain(Request& q, Result& r) {
  RequestUpdate u;
  while (q.wait(u, std::chrono::milliseconds(0))) {
    r.text += u.text;
    for (auto& t : u.tokens) r.ids.push_back(t.id);
    if (u.finished) {
      r.finish = u.finish_reason;
      r.completion = u.completion_tokens;
      return true;
    }
  }
  return false;
}

// Runs every request to completion on one scheduler, stepping on this thread.
std::vector<Result> run_all(Scheduler& s, const std::vector<RequestParams>& reqs, int64_t* max_steps = nullptr) {
  std::vector<std::shared_ptr<Request>> qs;
  for (const auto& p : reqs) {
    auto r = s.submit(p);
    EXPECT_EQ(r.status, SubmitStatus::Ok) << r.error;
    qs.push_back(r.request);
  }
  std::vector<Result> out(qs.size());
  std::vector<bool> done(qs.size(), false);
  int64_t steps = 0;
  for (size_t left = qs.size(); left > 0;) {
    s.step();
    ++steps;
    for (size_t i = 0; i < qs.size(); ++i)
      if (!done[i] && drain(*qs[i], out[i])) {
        done[i] = true;
        --left;
      }
    if (steps > 100000) {
      ADD_FAILURE() << "no progress";
      break;
    }
  }
  if (max_steps) *max_steps = steps;
  return out;
}

Result run_alone(const RequestParams& p, int64_t n_blocks = 512) {
  KVCache kv(tiny().files.config, n_blocks, 16);
  SchedulerOptions o;
  o.max_batch = 1;
  Scheduler s(tiny().model, kv, tiny().files.tokenizer, tiny().files.config.eos_ids, o);
  return run_all(s, {p})[0];
}

}  // namespace

// The batched forward pass must be row-independent bit for bit: a sequence's
// logits may not depend on what else is in the batch or on how its prompt was
// chunked, or greedy results would differ between solo and batched runs.
TEST(Scheduler, ForwardIsBitwiseRowIndependent) {
  std::mt19937 rng(std::random_device{}());
  auto& t = tiny();
  KVCache kv(t.files.config, 256, 16);
  const auto a = random_prompt(rng, 45), b = random_prompt(rng, 70), c = random_prompt(rng, 3);
  ForwardOutput solo, both;
  SequenceKV s1;
  t.model.forward({BatchEntry{&s1, a.data(), int64_t(a.size()), true}}, kv, solo);
  // Same sequence, chunked 17 + 28, mixed with a long prefill and a short one.
  SequenceKV s2, sb, sc;
  t.model.forward({BatchEntry{&sc, c.data(), 3, false}, BatchEntry{&s2, a.data(), 17, false}}, kv, both);
  t.model.forward({BatchEntry{&sb, b.data(), 70, false}, BatchEntry{&s2, a.data() + 17, 28, true},
                   BatchEntry{&sc, c.data(), 1, false}}, kv, both);
  const int64_t V = t.files.config.vocab;
  for (int64_t i = 0; i < 28; ++i)
    ASSERT_EQ(std::memcmp(solo.row(0, 17 + i), both.row(1, i), size_t(V) * 4), 0) << "row " << i;
  // One decode step alone and in a batch of three.
  const int32_t next = 1234;
  ForwardOutput d1, d3;
  SequenceKV s3;
  t.model.forward({BatchEntry{&s3, a.data(), int64_t(a.size()), false}}, kv, d1);
  t.model.forward({BatchEntry{&s3, &next, 1, false}}, kv, d1);
  t.model.forward({BatchEntry{&sb, &next, 1, false}, BatchEntry{&s2, &next, 1, false},
                   BatchEntry{&sc, &next, 1, false}}, kv, d3);
  EXPECT_EQ(std::memcmp(d1.row(0), d3.row(1), size_t(V) * 4), 0);
  for (auto* s : {&s1, &s2, &s3, &sb, &sc}) kv.release(*s);
  EXPECT_EQ(kv.free_blocks(), kv.n_blocks());
}

TEST(Scheduler, BatchedGreedyEqualsSoloAndGenerate) {
  std::mt19937 rng(std::random_device{}());
  std::vector<RequestParams> reqs;
  for (int i = 0; i < 10; ++i) {
    RequestParams p;
    p.prompt = random_prompt(rng, 5 + int64_t(rng() % 60));
    p.max_tokens = 8 + int64_t(rng() % 24);
    p.ignore_eos = i % 2 == 0;
    reqs.push_back(p);
  }
  KVCache kv(tiny().files.config, 512, 16);
  SchedulerOptions o;
  o.max_batch = 6;     // some requests wait for a slot
  o.step_tokens = 48;  // long prompts are chunked
  Scheduler s(tiny().model, kv, tiny().files.tokenizer, tiny().files.config.eos_ids, o);
  const auto batched = run_all(s, reqs);
  for (size_t i = 0; i < reqs.size(); ++i) {
    const auto solo = run_alone(reqs[i]);
    EXPECT_EQ(batched[i].ids, solo.ids) << i;
    EXPECT_EQ(batched[i].text, solo.text) << i;
    EXPECT_EQ(batched[i].finish, solo.finish) << i;
    EXPECT_EQ(batched[i].completion, int64_t(batched[i].ids.size()));
  }
  // And the single-sequence generate() agrees with the scheduler (EOS-stopping requests).
  EngineOptions eo;
  eo.device = "cpu";  // the scheduler above ran the CPU model (on a GPU machine auto is cuda, f16 KV)
  Engine engine(load_model_files(std::string(ANYBIT_SOURCE_DIR) + "/models/tiny-llama"), eo);
  for (size_t i = 1; i < reqs.size(); i += 2) {
    GenerateOptions g;
    g.max_new_tokens = reqs[i].max_tokens;
    const auto r = generate(engine, reqs[i].prompt, g);
    EXPECT_EQ(batched[i].ids, r.ids) << i;
    EXPECT_EQ(batched[i].text, r.text) << i;
    EXPECT_EQ(batched[i].finish, r.finish_reason) << i;
  }
  EXPECT_EQ(kv.free_blocks(), kv.n_blocks());
  EXPECT_EQ(s.prefix_table_size(), 0u);
}

TEST(Scheduler, SeededSamplingIsTheSameBatchedOrAlone) {
  std::mt19937 rng(std::random_device{}());
  std::vector<RequestParams> reqs;
  for (int i = 0; i < 6; ++i) {
    RequestParams p;
    p.prompt = random_prompt(rng, 12);
    p.max_tokens = 24;
    p.ignore_eos = true;
    p.sampling.temperature = 0.9f;
    p.sampling.top_p = 0.95f;
    p.sampling.seed = 1000 + uint64_t(i % 3);
    reqs.push_back(p);
  }
  reqs[3].prompt = reqs[0].prompt;  // same prompt and seed as request 0
  reqs[3].sampling.seed = reqs[0].sampling.seed;
  KVCache kv(tiny().files.config, 512, 16);
  Scheduler s(tiny().model, kv, tiny().files.tokenizer, tiny().files.config.eos_ids, SchedulerOptions{});
  const auto batched = run_all(s, reqs);
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(batched[i].ids, run_alone(reqs[i]).ids) << i;
  EXPECT_EQ(batched[0].ids, batched[3].ids);
  EXPECT_NE(batched[0].ids, batched[1].ids);
}

TEST(Scheduler, PreemptsUnderATinyKVBudgetAndStillFinishesEverything) {
  std::mt19937 rng(std::random_device{}());
  std::vector<RequestParams> reqs;
  for (int i = 0; i < 5; ++i) {
    RequestParams p;
    p.prompt = random_prompt(rng, 30 + int64_t(rng() % 20));
    p.max_tokens = 60;
    p.ignore_eos = true;
    reqs.push_back(p);
  }
  // 10 blocks = 160 positions; each request needs up to 7 blocks: at most one fits whole.
  KVCache kv(tiny().files.config, 10, 16);
  SchedulerOptions o;
  o.max_batch = 5;
  o.step_tokens = 32;
  Scheduler s(tiny().model, kv, tiny().files.tokenizer, tiny().files.config.eos_ids, o);
  const auto batched = run_all(s, reqs);
  const auto st = s.stats();
  EXPECT_GT(st.preemptions, 0u);
  EXPECT_EQ(st.requests_finished, 5u);
  EXPECT_EQ(kv.free_blocks(), kv.n_blocks());
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(batched[i].finish, "length");
    EXPECT_EQ(batched[i].ids, run_alone(reqs[i]).ids) << "request " << i << " changed by preemption";
  }
  // Recomputation shows in the counters: more tokens ran than prompts plus outputs.
  uint64_t useful = 0;
  for (const auto& r : reqs) useful += uint64_t(r.prompt.size()) + 59;
  EXPECT_GT(st.computed_tokens, useful);
}

TEST(Scheduler, ALoneSequenceLargerThanTheCacheEndsWithLength) {
  std::mt19937 rng(std::random_device{}());
  RequestParams p;
  p.prompt = random_prompt(rng, 20);
  p.max_tokens = 200;
  p.ignore_eos = true;
  const auto r = run_alone(p, 4);  // 64 positions
  EXPECT_EQ(r.finish, "length");
  EXPECT_EQ(int64_t(r.ids.size()), 64 - 20 + 1);  // the last sampled token needs no KV slot
}

TEST(Scheduler, ChunkedPrefillInterleavesWithDecoding) {
  std::mt19937 rng(std::random_device{}());
  KVCache kv(tiny().files.config, 128, 16);
  SchedulerOptions o;
  o.step_tokens = 16;
  Scheduler s(tiny().model, kv, tiny().files.tokenizer, tiny().files.config.eos_ids, o);
  RequestParams a;
  a.prompt = random_prompt(rng, 10);
  a.max_tokens = 100;
  a.ignore_eos = true;
  auto qa = s.submit(a).request;
  s.step();  // a's prompt fits in one step and its first token comes out
  Result ra;
  drain(*qa, ra);
  ASSERT_EQ(ra.ids.size(), 1u);
  RequestParams b;
  b.prompt = random_prompt(rng, 100);
  b.max_tokens = 4;
  auto qb = s.submit(b).request;
  Result rb;
  // b's 100 prompt tokens take 100 / 15 steps (a's decode uses one token of each
  // budget of 16); a keeps decoding one token per step all along.
  int steps = 0;
  while (rb.ids.empty()) {
    s.step();
    ++steps;
    drain(*qa, ra);
    drain(*qb, rb);
    ASSERT_EQ(int(ra.ids.size()), 1 + steps);
    ASSERT_LT(steps, 20);
  }
  EXPECT_EQ(steps, (100 + 14) / 15);
  EXPECT_EQ(s.stats().steps, uint64_t(1 + steps));
  qa->cancel();
  qb->cancel();
  s.step();
  EXPECT_EQ(kv.free_blocks(), kv.n_blocks());
}

TEST(Scheduler, IdenticalPromptBlocksAreSharedAndRefcounted) {
  std::mt19937 rng(std::random_device{}());
  KVCache kv(tiny().files.config, 64, 16);
  SchedulerOptions o;
  Scheduler s(tiny().model, kv, tiny().files.tokenizer, tiny().files.config.eos_ids, o);
  RequestParams p;
  p.prompt = random_prompt(rng, 64);  // 4 full blocks
  p.max_tokens = 12;
  p.ignore_eos = true;
  auto qa = s.submit(p).request;
  s.step();  // a's prompt is computed and its full blocks registered
  EXPECT_EQ(s.prefix_table_size(), 4u);
  EXPECT_EQ(kv.free_blocks(), 64 - 4);
  auto qb = s.submit(p).request;
  s.step();
  // b took blocks 0..2 from a (the 4th must be computed: its logits give b's first
  // token), so it took one new block, for positions 48..63; a took one to decode.
  const auto st = s.stats();
  EXPECT_EQ(st.prefix_hit_tokens, 48u);
  EXPECT_EQ(kv.free_blocks(), 64 - 4 - 1 - 1);
  int shared = 0;
  for (int32_t blk = 0; blk < 64; ++blk) shared += kv.refcount(blk) == 2;
  EXPECT_EQ(shared, 3);
  Result ra, rb;
  while (!(drain(*qa, ra) & drain(*qb, rb))) s.step();
  EXPECT_EQ(ra.ids, rb.ids);
  EXPECT_EQ(ra.ids, run_alone(p).ids);
  s.step();
  EXPECT_EQ(kv.free_blocks(), kv.n_blocks());
  EXPECT_EQ(s.prefix_table_size(), 0u);
  for (int32_t blk = 0; blk < 64; ++blk) EXPECT_EQ(kv.refcount(blk), 0);
}

TEST(Scheduler, CancellationFreesBlocksAtTheNextStep) {
  std::mt19937 rng(std::random_device{}());
  KVCache kv(tiny().files.config, 64, 16);
  Scheduler s(tiny().model, kv, tiny().files.tokenizer, tiny().files.config.eos_ids, SchedulerOptions{});
  RequestParams p;
  p.prompt = random_prompt(rng, 40);
  p.max_tokens = 500;
  p.ignore_eos = true;
  auto q1 = s.submit(p).request;
  p.prompt = random_prompt(rng, 40);
  auto q2 = s.submit(p).request;
  for (int i = 0; i < 3; ++i) s.step();
  EXPECT_LT(kv.free_blocks(), 64 - 4);
  q1->cancel();
  s.step();
  Result r1, r2;
  EXPECT_TRUE(drain(*q1, r1));
  EXPECT_EQ(r1.finish, "cancelled");
  EXPECT_EQ(kv.free_blocks(), 64 - 3);  // only q2's 43 positions are left
  EXPECT_EQ(s.stats().kv_blocks_free, 64 - 3);
  q2->cancel();
  s.step();
  EXPECT_TRUE(drain(*q2, r2));
  EXPECT_EQ(kv.free_blocks(), 64);
  EXPECT_EQ(s.stats().requests_cancelled, 2u);
  EXPECT_FALSE(s.step());  // nothing left to do
}

TEST(Scheduler, QueueIsBoundedAndInvalidRequestsAreRefused) {
  KVCache kv(tiny().files.config, 8, 16);
  SchedulerOptions o;
  o.max_batch = 1;
  o.max_queue = 2;
  o.max_context = 100;
  Scheduler s(tiny().model, kv, tiny().files.tokenizer, tiny().files.config.eos_ids, o);
  RequestParams p;
  p.prompt = {0, 500, 600};
  p.max_tokens = 4;
  EXPECT_EQ(s.submit(p).status, SubmitStatus::Ok);
  EXPECT_EQ(s.submit(p).status, SubmitStatus::Ok);
  EXPECT_EQ(s.submit(p).status, SubmitStatus::QueueFull);
  EXPECT_EQ(s.stats().waiting, 2);
  s.step();  // one is admitted: a queue slot frees up
  EXPECT_EQ(s.stats().waiting, 1);
  EXPECT_EQ(s.stats().running, 1);
  EXPECT_EQ(s.submit(p).status, SubmitStatus::Ok);
  EXPECT_EQ(s.submit(p).status, SubmitStatus::QueueFull);
  EXPECT_EQ(s.stats().requests_rejected, 2u);

  RequestParams bad = p;
  bad.prompt.clear();
  EXPECT_EQ(s.submit(bad).status, SubmitStatus::Invalid);
  bad.prompt.assign(100, 5);  // no room for a generated token
  EXPECT_EQ(s.submit(bad).status, SubmitStatus::Invalid);
  bad.prompt = {0, 9000};  // outside the 8192-token vocabulary
  EXPECT_EQ(s.submit(bad).status, SubmitStatus::Invalid);
  bad.prompt = p.prompt;
  bad.sampling.top_p = 0;
  EXPECT_EQ(s.submit(bad).status, SubmitStatus::Invalid);
  KVCache small(tiny().files.config, 2, 16);
  Scheduler s2(tiny().model, small, tiny().files.tokenizer, tiny().files.config.eos_ids, o);
  bad = p;
  bad.prompt.assign(40, 5);  // 40 + 1 positions need 3 blocks; the cache has 2
  EXPECT_EQ(s2.submit(bad).status, SubmitStatus::Invalid);
}

TEST(Scheduler, StopStringsEndGenerationAndAreNotShown) {
  // The greedy continuation of "The kernel" contains "aware" (see tests/test_cli.cpp).
  RequestParams p;
  p.prompt = tiny().files.tokenizer.encode("The kernel", true);
  p.max_tokens = 48;
  const auto full = run_alone(p);
  const size_t at = full.text.find("aware");
  ASSERT_NE(at, std::string::npos) << full.text;
  p.stop = {"aware"};
  const auto cut = run_alone(p);
  EXPECT_EQ(cut.text, full.text.substr(0, at));
  EXPECT_EQ(cut.finish, "stop");
  EXPECT_LT(cut.ids.size(), full.ids.size());
}

TEST(Scheduler, EngineThreadServesAndShutsDownCleanly) {
  std::mt19937 rng(std::random_device{}());
  KVCache kv(tiny().files.config, 128, 16);
  SchedulerOptions o;
  o.max_batch = 2;
  auto s = std::make_unique<Scheduler>(tiny().model, kv, tiny().files.tokenizer, tiny().files.config.eos_ids, o);
  s->start();
  RequestParams p;
  p.prompt = random_prompt(rng, 20);
  p.max_tokens = 6;
  p.ignore_eos = true;
  auto q = s->submit(p).request;
  RequestUpdate u;
  std::string text;
  int64_t n = 0;
  while (true) {
    ASSERT_TRUE(q->wait(u, std::chrono::seconds(30)));
    n += int64_t(u.tokens.size());
    if (u.finished) break;
  }
  EXPECT_EQ(n, 6);
  EXPECT_EQ(u.finish_reason, "length");
  // Requests that cannot finish within the grace period are cancelled, queued ones too.
  p.max_tokens = 1000;
  std::vector<std::shared_ptr<Request>> qs;
  for (int i = 0; i < 4; ++i) qs.push_back(s->submit(p).request);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  s->stop(std::chrono::milliseconds(100));
  for (auto& r : qs) {
    ASSERT_TRUE(r->wait(u, std::chrono::seconds(0)));
    EXPECT_TRUE(u.finished);
    EXPECT_EQ(u.finish_reason, "cancelled");
  }
  EXPECT_EQ(s->submit(p).status, SubmitStatus::ShuttingDown);
  EXPECT_EQ(kv.free_blocks(), kv.n_blocks());
}

TEST(SchedulerStats, HistogramAndRate) {
  Histogram h({0.1, 0.2, 0.5});
  for (double v : {0.05, 0.15, 0.15, 0.3, 2.0}) h.observe(v);
  EXPECT_EQ(h.count(), 5u);
  EXPECT_DOUBLE_EQ(h.sum(), 2.65);
  EXPECT_EQ(h.cumulative(0), 1u);  // <= 0.1
  EXPECT_EQ(h.cumulative(1), 3u);  // <= 0.2
  EXPECT_EQ(h.cumulative(2), 4u);  // <= 0.5
  EXPECT_EQ(h.cumulative(3), 5u);  // +Inf
  EXPECT_GT(h.quantile(0.5), 0.1);
  EXPECT_LE(h.quantile(0.5), 0.2);
  EXPECT_DOUBLE_EQ(h.quantile(1.0), 0.5);  // the +Inf bucket reports the last bound
  RateWindow r(10.0);
  r.add(0.0, 50);
  r.add(5.0, 50);
  EXPECT_DOUBLE_EQ(r.rate(5.0), 10.0);
  EXPECT_DOUBLE_EQ(r.rate(12.0), 5.0);  // the sample at t = 0 has left the window
  r.add(30.0, 0);
  EXPECT_DOUBLE_EQ(r.rate(30.0), 0.0);
}
