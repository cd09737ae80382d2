// The batched forward pass: prefill and decode of several sequences mixed in one
// call must give the logits each sequence gets alone; the paged KV cache's
// bookkeeping; attention against its two-pass reference on random data.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "kernels/attention.h"
#include "model/llama.h"
#include "runtime/device.h"
#include "runtime/random_model.h"

using namespace anybit;

namespace {

float max_abs_diff(const float* a, const float* b, int64_t n) {
  float m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

std::vector<int32_t> random_tokens(std::mt19937& rng, int64_t n, int64_t vocab) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = int32_t(rng() % uint32_t(vocab));
  return t;
}

}  // namespace

TEST(Batching, MixedPrefillAndDecodeEqualsSequential) {
  std::random_device rd;
  const unsigned seed = rd();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  ModelConfig cfg = named_shape("tiny");
  cfg.vocab = 512;
  ModelFiles m = make_random_model(cfg, DType::BF16, seed);
  LlamaModel model(cfg, m.weights);
  KVCache kv(cfg, 64, 16);

  // Three sequences: A has a 21-token history and decodes one token, B prefills 37,
  // C has 5 and appends a chunk of 9 (chunked prefill).
  auto a_hist = random_tokens(rng, 21, cfg.vocab), b = random_tokens(rng, 37, cfg.vocab);
  auto c_hist = random_tokens(rng, 5, cfg.vocab), c_chunk = random_tokens(rng, 9, cfg.vocab);
  int32_t a_next = int32_t(rng() % 512);

  auto solo = [&](std::vector<std::vector<int32_t>> steps, bool all) {
    SequenceKV s;
    ForwardOutput out;
    for (size_t i = 0; i < steps.size(); ++i)
      model.forward({BatchEntry{&s, steps[i].data(), int64_t(steps[i].size()), all && i + 1 == steps.size()}}, kv, out);
    kv.release(s);
    return out;
  };
  ForwardOutput ra = solo({a_hist, {a_next}}, false), rb = solo({b}, true), rc = solo({c_hist, c_chunk}, false);

  SequenceKV sa, sb, sc;
  ForwardOutput out;
  model.forward({BatchEntry{&sa, a_hist.data(), 21, false}, BatchEntry{&sc, c_hist.data(), 5, false}}, kv, out);
  model.forward({BatchEntry{&sa, &a_next, 1, false}, BatchEntry{&sb, b.data(), 37, true},
                 BatchEntry{&sc, c_chunk.data(), 9, false}}, kv, out);
  EXPECT_LT(max_abs_diff(out.row(0), ra.row(0), cfg.vocab), 1e-4f);
  for (int64_t i = 0; i < 37; ++i) ASSERT_LT(max_abs_diff(out.row(1, i), rb.row(0, i), cfg.vocab), 1e-4f) << i;
  EXPECT_LT(max_abs_diff(out.row(2), rc.row(0), cfg.vocab), 1e-4f);
  EXPECT_EQ(sa.n_tokens, 22);
  EXPECT_EQ(sb.n_tokens, 37);
  EXPECT_EQ(sc.n_tokens, 14);
  kv.release(sa);
  kv.release(sb);
  kv.release(sc);
  EXPECT_EQ(kv.free_blocks(), kv.n_blocks());
}

TEST(Batching, FullCacheFailsWithoutChangingAnything) {
  ModelConfig cfg = named_shape("tiny");
  cfg.vocab = 256;
  ModelFiles m = make_random_model(cfg, DType::F32, 3);
  LlamaModel model(cfg, m.weights);
  KVCache kv(cfg, 4, 16);  // 64 positions in all
  std::vector<int32_t> t(40, 5);
  SequenceKV a, b;
  ForwardOutput out;
  model.forward({BatchEntry{&a, t.data(), 40, false}}, kv, out);
  EXPECT_EQ(kv.free_blocks(), 1);
  EXPECT_THROW(model.forward({BatchEntry{&b, t.data(), 10, false}, BatchEntry{&a, t.data(), 30, false}}, kv, out),
               Error);
  EXPECT_EQ(kv.free_blocks(), 1);
  EXPECT_EQ(a.blocks.size(), 3u);
  EXPECT_TRUE(b.blocks.empty());
  EXPECT_EQ(a.n_tokens, 40);
  std::vector<int32_t> bad = {5, 9999};
  EXPECT_THROW(model.forward({BatchEntry{&b, bad.data(), 2, false}}, kv, out), Error);
  EXPECT_TRUE(b.blocks.empty());
  kv.release(a);
  EXPECT_EQ(kv.free_blocks(), 4);
}

TEST(KVCache, SharedBlocksAreFreedByTheirLastUser) {
  ModelConfig cfg = named_shape("tiny");
  KVCache kv(cfg, 8, 16);
  SequenceKV a, b;
  ASSERT_TRUE(kv.reserve(a, 40));
  EXPECT_EQ(a.blocks.size(), 3u);
  b.blocks = {a.blocks[0]};
  kv.retain(a.blocks[0]);
  EXPECT_EQ(kv.refcount(a.blocks[0]), 2);
  kv.release(a);
  EXPECT_EQ(kv.free_blocks(), 7);
  kv.release(b);
  EXPECT_EQ(kv.free_blocks(), 8);
  EXPECT_FALSE(kv.reserve(a, 16 * 9));
  EXPECT_TRUE(a.blocks.empty());
}

// A cache made for a GPU backend keeps only the bookkeeping; the CPU model refuses it with a
// clear error and changes nothing. The byte budget counts the element size of the cache.
TEST(KVCache, BookkeepingOnlyCacheAndElementSizes) {
  ModelConfig cfg = named_shape("tiny");  // 4 layers, 2 kv heads of 32: 16 KiB per fp32 block
  cfg.vocab = 256;
  KVCache book(cfg, 8, 16, false);
  EXPECT_FALSE(book.has_storage());
  EXPECT_EQ(book.bytes(), 0u);
  SequenceKV a;
  ASSERT_TRUE(book.reserve(a, 40));  // block bookkeeping still works
  book.release(a);
  ModelFiles m = make_random_model(cfg, DType::F32, 4);
  LlamaModel model(cfg, m.weights);
  std::vector<int32_t> t(5, 7);
  ForwardOutput out;
  EXPECT_THROW(model.forward({BatchEntry{&a, t.data(), 5, false}}, book, out), Error);
  EXPECT_TRUE(a.blocks.empty());
  EXPECT_EQ(book.free_blocks(), 8);
  const size_t block_f32 = size_t(4 * 2 * 2 * 16 * 32) * 4;
  EXPECT_EQ(KVCache::blocks_for_bytes(cfg, 10 * block_f32), 10);
  EXPECT_EQ(KVCache::blocks_for_bytes(cfg, 10 * block_f32, 16, kv_elem_bytes(Device::Cuda, std::nullopt, 32)), 20);
  EXPECT_EQ(KVCache::blocks_for_bytes(cfg, 10 * block_f32, 16, kv_elem_bytes(Device::Cuda, DType::F32, 32)), 10);
  EXPECT_EQ(KVCache::blocks_for_bytes(cfg, 10 * block_f32, 16, kv_elem_bytes(Device::Cuda, DType::I8, 32)), 35);
  EXPECT_EQ(KVCache::blocks_for_bytes(cfg, 10 * block_f32, 16, kv_elem_bytes(Device::Cpu, DType::F16, 32)), 10);
}

TEST(Attention, OnlineSoftmaxMatchesTwoPassReference) {
  std::random_device rd;
  const unsigned seed = rd();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t window : {int64_t(0), int64_t(7)}) {
    ModelConfig cfg = named_shape("tiny");  // 8 heads, 2 KV heads, head_dim 32
    KVCache kv(cfg, 16, 16);
    SequenceKV seq;
    const int64_t ctx = 53, n_q = 11;
    ASSERT_TRUE(kv.reserve(seq, ctx));
    // Shuffle the block table so that pages are not in order.
    std::shuffle(seq.blocks.begin(), seq.blocks.end(), rng);
    for (int64_t p = 0; p < ctx; ++p)
      for (int64_t h = 0; h < cfg.n_kv_heads; ++h)
        for (int64_t d = 0; d < cfg.head_dim; ++d) {
          kv.k(seq.blocks[size_t(p / 16)], 1, h)[(p % 16) * cfg.head_dim + d] = 3.0f * nd(rng);
          kv.v(seq.blocks[size_t(p / 16)], 1, h)[(p % 16) * cfg.head_dim + d] = nd(rng);
        }
    std::vector<float> q(size_t(n_q * cfg.n_heads * cfg.head_dim));
    for (auto& x : q) x = nd(rng);
    std::vector<float> got(q.size(), NAN), want(q.size(), NAN);
    AttentionArgs a;
    a.q = q.data();
    a.n_q = n_q;
    a.pos0 = ctx - n_q;
    a.layer = 1;
    a.n_heads = cfg.n_heads;
    a.scale = 0.2f;
    a.window = window;
    a.out = got.data();
    attention_paged(a, kv, seq);
    a.out = want.data();
    attention_paged_reference(a, kv, seq);
    EXPECT_LT(max_abs_diff(got.data(), want.data(), int64_t(q.size())), 2e-5f) << "window " << window;
  }
}
