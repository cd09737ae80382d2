// CUDA kernels against the CPU references, on fresh random data each run (the seed is
// printed on failure; replay with ANYBIT_TEST_SEED=<seed>), outputs poisoned with NaN
// first so an unwritten element fails. Skipped when no CUDA device is visible.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "test_cuda_util.h"

#ifdef ANYBIT_WITH_CUDA
#include "kernels/attention.h"
#include "kernels/cuda_kernels.h"
#include "kernels/rope.h"
#include "kernels/scalar_ref.h"
#include "runtime/sampler.h"

namespace anybit {
namespace {

using test::DeviceArray;

std::vector<uint8_t> random_weights(std::mt19937_64& rng, DType t, int64_t rows, int64_t cols) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<uint8_t> w(dtype_row_bytes(t, cols) * size_t(rows));
  for (int64_t i = 0; i < rows * cols; ++i) {
    const float v = nd(rng);
    if (t == DType::F32) std::memcpy(w.data() + 4 * i, &v, 4);
    else {
      const uint16_t h = t == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
      std::memcpy(w.data() + 2 * i, &h, 2);
    }
  }
  return w;
}

using test::randn;

// Relative error bound of an fp32 dot product of length k against a double reference,
// scaled by sum |x||w| (loose: any ordering of the fp32 sum).
double dot_tol(int64_t k, double abs_sum) { return 4.0 * double(k + 32) / double(1 << 24) * abs_sum + 1e-6; }

struct LinearCase {
  int64_t m, n, k;
};

// One GPU linear (path chosen by `path`: 0 = linear(), 1 = gemv, 2 = gemm) vs the scalar reference.
void check_linear(std::mt19937_64& rng, DType t, const LinearCase& c, cuda::InputOp op, bool bias, bool accumulate,
                  int path) {
  SCOPED_TRACE(fmt::format("dtype={} m={} n={} k={} op={} bias={} acc={} path={}", dtype_name(t), c.m, c.n, c.k,
                           int(op), bias, accumulate, path));
  const int64_t ldx = op == cuda::InputOp::SiluMul ? 2 * c.k : c.k;
  const auto w = random_weights(rng, t, c.n, c.k);
  const auto x = randn(rng, size_t(c.m * ldx));
  const auto nw = randn(rng, size_t(c.k));
  const auto b = randn(rng, size_t(c.n));
  const auto y0 = randn(rng, size_t(c.m * c.n));
  // Reference input after the transform, then y = x' W^T in double.
  std::vector<float> xin(size_t(c.m * c.k));
  if (op == cuda::InputOp::RmsNorm) scalar::rmsnorm(x.data(), nw.data(), DType::F32, c.m, c.k, 1e-5f, xin.data());
  else if (op == cuda::InputOp::SiluMul) scalar::silu_mul(x.data(), x.data() + c.k, c.m, c.k, ldx, xin.data());
  else xin = x;
  std::vector<float> wf(size_t(c.n * c.k));
  dequantize_row(t, w.data(), wf.data(), c.n * c.k);

  DeviceArray<uint8_t> dw(w);
  DeviceArray<float> dx(x), dnw(nw), db(b), dy(size_t(c.m * c.n));
  if (accumulate) dy.upload(y0);
  else dy.poison();
  cuda::DeviceWeight W{t, c.n, c.k, dw.get()};
  cuda::LinearArgs a;
  a.x = dx.get(), a.m = c.m, a.ldx = ldx, a.op = op, a.norm_w = dnw.get(), a.eps = 1e-5f;
  a.bias = bias ? db.get() : nullptr, a.accumulate = accumulate, a.y = dy.get(), a.ldy = c.n;
  if (path == 1) cuda::gemv(a, W, nullptr);
  else if (path == 2) cuda::gemm(a, W, nullptr);
  else cuda::linear(a, W, nullptr);
  const auto y = dy.download();
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = 0; j < c.n; ++j) {
      double ref = 0, abs_sum = 0;
      for (int64_t kk = 0; kk < c.k; ++kk) {
        const double p = double(xin[size_t(i * c.k + kk)]) * wf[size_t(j * c.k + kk)];
        ref += p;
        abs_sum += std::fabs(p);
      }
      if (bias) ref += b[size_t(j)], abs_sum += std::fabs(b[size_t(j)]);
      if (accumulate) ref += y0[size_t(i * c.n + j)], abs_sum += std::fabs(y0[size_t(i * c.n + j)]);
      const float got = y[size_t(i * c.n + j)];
      ASSERT_TRUE(std::isfinite(got)) << "row " << i << " col " << j << " not written";
      ASSERT_NEAR(got, ref, dot_tol(c.k, abs_sum)) << "row " << i << " col " << j;
    }
}

// The fused gate|up GEMV: W rows interleave gate and up, y[i][j] = silu(gate_j) * up_j.
void check_silu_pairs(std::mt19937_64& rng, DType t, const LinearCase& c) {
  SCOPED_TRACE(fmt::format("silu pairs dtype={} m={} n={} k={}", dtype_name(t), c.m, c.n, c.k));
  const auto w = random_weights(rng, t, c.n, c.k);
  const auto x = randn(rng, size_t(c.m * c.k)), nw = randn(rng, size_t(c.k)), b = randn(rng, size_t(c.n));
  std::vector<float> xin(size_t(c.m * c.k)), wf(size_t(c.n * c.k));
  scalar::rmsnorm(x.data(), nw.data(), DType::F32, c.m, c.k, 1e-5f, xin.data());
  dequantize_row(t, w.data(), wf.data(), c.n * c.k);
  DeviceArray<uint8_t> dw(w);
  DeviceArray<float> dx(x), dnw(nw), db(b), dy(size_t(c.m * c.n / 2));
  dy.poison();
  cuda::LinearArgs a;
  a.x = dx.get(), a.m = c.m, a.ldx = c.k, a.op = cuda::InputOp::RmsNorm, a.norm_w = dnw.get(), a.bias = db.get();
  a.silu_pairs = true, a.y = dy.get(), a.ldy = c.n / 2;
  cuda::linear(a, cuda::DeviceWeight{t, c.n, c.k, dw.get()}, nullptr);
  const auto y = dy.download();
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = 0; j < c.n / 2; ++j) {
      double g = b[size_t(2 * j)], u = b[size_t(2 * j + 1)], ga = std::fabs(g), ua = std::fabs(u);
      for (int64_t kk = 0; kk < c.k; ++kk) {
        const double xv = xin[size_t(i * c.k + kk)];
        g += xv * wf[size_t(2 * j * c.k + kk)], ga += std::fabs(xv * wf[size_t(2 * j * c.k + kk)]);
        u += xv * wf[size_t((2 * j + 1) * c.k + kk)], ua += std::fabs(xv * wf[size_t((2 * j + 1) * c.k + kk)]);
      }
      const double ref = g / (1.0 + std::exp(-g)) * u;
      // d(silu(g) u) = silu'(g) u dg + silu(g) du, |silu'| <= 1.1
      const double tol = 1.1 * std::fabs(u) * dot_tol(c.k, ga) + (std::fabs(g) + 1) * dot_tol(c.k, ua) + 1e-6;
      const float got = y[size_t(i * c.n / 2 + j)];
      ASSERT_TRUE(std::isfinite(got)) << "row " << i << " col " << j << " not written";
      ASSERT_NEAR(got, ref, tol) << "row " << i << " col " << j;
    }
}

TEST(CudaKernels, LinearGemvAndGemmMatchScalarReference) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::cuda_test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const std::vector<LinearCase> gemv_cases = {{1, 256, 512}, {2, 33, 64}, {3, 300, 1024}, {4, 130, 136}, {1, 2100, 256}};
  const std::vector<LinearCase> gemm_cases = {{5, 70, 96}, {17, 100, 200}, {64, 129, 77}, {1, 40, 36}, {130, 65, 33}};
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    for (const auto& c : gemv_cases) {
      for (auto op : {cuda::InputOp::None, cuda::InputOp::RmsNorm, cuda::InputOp::SiluMul})
        check_linear(rng, t, c, op, op == cuda::InputOp::None, op == cuda::InputOp::SiluMul, 1);
      check_linear(rng, t, c, cuda::InputOp::None, true, true, 2);
    }
    for (const LinearCase& c : {LinearCase{1, 256, 512}, LinearCase{2, 66, 64}, LinearCase{3, 2100, 256},
                                LinearCase{4, 130, 136}, LinearCase{1, 16384, 128}})
      check_silu_pairs(rng, t, c);
    for (const auto& c : gemm_cases) {
      check_linear(rng, t, c, cuda::InputOp::None, false, false, 0);
      check_linear(rng, t, c, cuda::InputOp::None, true, true, 2);
    }
  }
}

TEST(CudaKernels, RmsNormSiluEmbedGatherArgmax) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::cuda_test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int64_t m = 5, n = 300;
  const auto x = randn(rng, size_t(m * n), 3.0f), w = randn(rng, size_t(n));
  std::vector<float> ref(size_t(m * n));
  scalar::rmsnorm(x.data(), w.data(), DType::F32, m, n, 1e-6f, ref.data());
  DeviceArray<float> dx(x), dw(w), dout(size_t(m * n));
  dout.poison();
  cuda::rmsnorm(dx.get(), n, dw.get(), m, n, 1e-6f, dout.get(), n, nullptr);
  auto got = dout.download();
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(got[i], ref[i], 1e-5 * (1 + std::fabs(ref[i]))) << i;

  const auto gu = randn(rng, size_t(m * 2 * n), 4.0f);
  scalar::silu_mul(gu.data(), gu.data() + n, m, n, 2 * n, ref.data());
  DeviceArray<float> dgu(gu);
  dout.poison();
  cuda::silu_mul(dgu.get(), m, n, dout.get(), nullptr);
  got = dout.download();
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(got[i], ref[i], 1e-5 * (1 + std::fabs(ref[i]))) << i;

  std::vector<float> gate(size_t(m * n)), up(size_t(m * n));
  for (int64_t i = 0; i < m * n; ++i) gate[size_t(i)] = gu[size_t(2 * i)], up[size_t(i)] = gu[size_t(2 * i + 1)];
  scalar::silu_mul(gate.data(), up.data(), m, n, n, ref.data());
  dout.poison();
  cuda::silu_mul_pairs(dgu.get(), m, n, dout.get(), nullptr);
  got = dout.download();
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(got[i], ref[i], 1e-5 * (1 + std::fabs(ref[i]))) << "pairs " << i;

  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    const int64_t vocab = 50, h = 72;
    const auto table = random_weights(rng, t, vocab, h);
    std::vector<int32_t> tok = {7, 0, 49, 7, 13};
    DeviceArray<uint8_t> dt(table);
    DeviceArray<int32_t> dtok(tok);
    DeviceArray<float> demb(tok.size() * size_t(h));
    demb.poison();
    cuda::embed(dtok.get(), int64_t(tok.size()), cuda::DeviceWeight{t, vocab, h, dt.get()}, demb.get(), nullptr);
    const auto e = demb.download();
    std::vector<float> row(static_cast<size_t>(h));
    for (size_t i = 0; i < tok.size(); ++i) {
      dequantize_row(t, table.data() + dtype_row_bytes(t, h) * size_t(tok[i]), row.data(), h);
      for (int64_t c = 0; c < h; ++c) ASSERT_EQ(e[i * size_t(h) + size_t(c)], row[size_t(c)]) << dtype_name(t);
    }
  }

  std::vector<int32_t> rows = {4, 0, 2};
  DeviceArray<int32_t> drows(rows);
  DeviceArray<float> dg(rows.size() * size_t(n));
  dg.poison();
  cuda::gather_rows(dx.get(), drows.get(), int64_t(rows.size()), n, dg.get(), nullptr);
  const auto g = dg.download();
  for (size_t r = 0; r < rows.size(); ++r)
    for (int64_t c = 0; c < n; ++c) ASSERT_EQ(g[r * size_t(n) + size_t(c)], x[size_t(rows[r] * n + c)]);

  const int64_t V = 5000, R = 4;
  auto logits = randn(rng, size_t(V * R));
  logits[size_t(1 * V + 17)] = 100.0f, logits[size_t(1 * V + 4000)] = 100.0f;  // tie: the first wins
  logits[size_t(2 * V + 3)] = NAN;                                              // NaN never wins
  logits[size_t(3 * V + V - 1)] = 50.0f;
  DeviceArray<float> dl(logits);
  DeviceArray<int32_t> dids(static_cast<size_t>(R));
  dids.poison();
  cuda::argmax_rows(dl.get(), R, V, dids.get(), nullptr);
  const auto ids = dids.download();
  for (int64_t r = 0; r < R; ++r) {
    std::vector<float> rowv(logits.begin() + r * V, logits.begin() + (r + 1) * V);
    for (auto& v : rowv)
      if (std::isnan(v)) v = -INFINITY;
    EXPECT_EQ(ids[size_t(r)], argmax(rowv.data(), V)) << "row " << r;
  }
}

ModelConfig attn_config(int64_t hd, int64_t heads, int64_t kv_heads) {
  ModelConfig c;
  c.hidden = heads * hd, c.n_layers = 2, c.n_heads = heads, c.n_kv_heads = kv_heads, c.head_dim = hd;
  c.ffn = 64, c.vocab = 32, c.max_position = 4096;
  c.rope_scaling.kind = RopeScaling::Kind::Llama3, c.rope_scaling.factor = 8, c.rope_scaling.original_max_position = 64;
  return c;
}

cuda::KVLayout layout_of(const ModelConfig& c, int64_t bs, float* base) {
  cuda::KVLayout l;
  l.base = base, l.n_layers = c.n_layers, l.n_kv_heads = c.n_kv_heads, l.head_dim = c.head_dim, l.block_size = bs;
  return l;
}

TEST(CudaKernels, RopeAndKVWriteMatchCpu) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::cuda_test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int64_t hd : {32, 48, 64, 128}) {
    const ModelConfig c = attn_config(hd, 4, 2);
    const int64_t bs = 16, n_blocks = 6, T = 7, qd = c.n_heads * hd, kvd = c.n_kv_heads * hd, ld = qd + 2 * kvd;
    KVCache kv(c, n_blocks, bs);
    const auto qkv = randn(rng, size_t(T * ld));
    std::vector<int32_t> pos = {0, 1, 15, 16, 40, 95, 3000}, slot = {0, 1, 15, 16, 40, 95, 50};
    const auto inv = rope_inv_freq(c);
    DeviceArray<float> dqkv(qkv), dinv(inv), dkv(kv.bytes() / 4);
    DeviceArray<int32_t> dpos(pos), dslot(slot);
    dkv.poison();
    cuda::RopeKVArgs a;
    a.qkv = dqkv.get(), a.ld = ld, a.n_tok = T, a.n_heads = c.n_heads, a.pos = dpos.get(), a.slot = dslot.get();
    a.inv_freq = dinv.get(), a.kv = layout_of(c, bs, dkv.get()), a.layer = 1;
    cuda::rope_kv_write(a, nullptr);
    const auto got = dqkv.download();
    const auto cache = dkv.download();
    std::vector<float> q(size_t(T * qd)), k(size_t(T * kvd));
    std::vector<int64_t> p64(pos.begin(), pos.end());
    for (int64_t t = 0; t < T; ++t) {
      std::memcpy(&q[size_t(t * qd)], &qkv[size_t(t * ld)], size_t(qd) * 4);
      std::memcpy(&k[size_t(t * kvd)], &qkv[size_t(t * ld + qd)], size_t(kvd) * 4);
    }
    rope_apply(q.data(), T, p64.data(), c.n_heads, hd, inv);
    rope_apply(k.data(), T, p64.data(), c.n_kv_heads, hd, inv);
    const float* base0 = kv.k(0, 0, 0);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t i = 0; i < qd; ++i) ASSERT_NEAR(got[size_t(t * ld + i)], q[size_t(t * qd + i)], 2e-6) << "hd " << hd;
      const int32_t blk = slot[size_t(t)] / int32_t(bs), off = slot[size_t(t)] % int32_t(bs);
      for (int64_t h = 0; h < c.n_kv_heads; ++h)
        for (int64_t i = 0; i < hd; ++i) {
          const size_t ko = size_t(kv.k(blk, 1, h) - base0 + off * hd + i), vo = size_t(kv.v(blk, 1, h) - base0 + off * hd + i);
          ASSERT_NEAR(cache[ko], k[size_t(t * kvd + h * hd + i)], 2e-6);
          ASSERT_EQ(cache[vo], qkv[size_t(t * ld + qd + kvd + h * hd + i)]);
        }
    }
    // Nothing else in the cache was touched.
    size_t written = 0;
    for (float v : cache) written += std::isnan(v) ? 0 : 1;
    EXPECT_EQ(written, size_t(T * 2 * kvd));
  }
}

// Two sequences with interleaved (non-contiguous) blocks in a randomly filled cache.
struct AttnFixture {
  ModelConfig cfg;
  int64_t bs = 16;
  KVCache kv;
  SequenceKV a, b;
  AttnFixture(const ModelConfig& c, std::mt19937_64& rng) : cfg(c), kv(c, 24, 16) {
    for (int64_t n = 16; n <= 80; n += 16) {
      kv.reserve(a, std::min<int64_t>(n, 37));
      kv.reserve(b, n + 10);
    }
    a.n_tokens = 37, b.n_tokens = 90;
    std::normal_distribution<float> nd(0.0f, 1.0f);
    float* s = kv.k(0, 0, 0);
    for (size_t i = 0; i < kv.bytes() / 4; ++i) s[i] = nd(rng);
  }
};

void check_attention(std::mt19937_64& rng, int64_t hd, int64_t heads, int64_t kv_heads, int64_t window, bool prefill,
                     int64_t split_len) {
  SCOPED_TRACE(fmt::format("hd={} heads={}/{} window={} prefill={} split_len={}", hd, heads, kv_heads, window, prefill,
                           split_len));
  ModelConfig c = attn_config(hd, heads, kv_heads);
  AttnFixture f(c, rng);
  const std::vector<SequenceKV*> seqs = {&f.a, &f.b};
  // queries: decode = the last position of each; prefill = the last 20 of a, last 5 of b
  const std::vector<int64_t> nq = prefill ? std::vector<int64_t>{20, 5} : std::vector<int64_t>{1, 1};
  const int64_t qd = heads * hd, T = nq[0] + nq[1];
  const auto q = randn(rng, size_t(T * qd));
  std::vector<int32_t> tok_pos, tok_seq, qstart, seq_nq, btab;
  const int64_t MB = 8;
  for (size_t s = 0; s < 2; ++s) {
    qstart.push_back(int32_t(tok_pos.size()));
    seq_nq.push_back(int32_t(nq[s]));
    for (int64_t i = 0; i < nq[s]; ++i) {
      tok_pos.push_back(int32_t(seqs[s]->n_tokens - nq[s] + i));
      tok_seq.push_back(int32_t(s));
    }
    for (int64_t bi = 0; bi < MB; ++bi)
      btab.push_back(bi < int64_t(seqs[s]->blocks.size()) ? seqs[s]->blocks[size_t(bi)] : 0);
  }
  DeviceArray<float> dq(q), dkv(f.kv.bytes() / 4), dout(size_t(T * qd));
  dkv.upload_bytes(f.kv.k(0, 0, 0), f.kv.bytes());
  DeviceArray<int32_t> dpos(tok_pos), dseq(tok_seq), dqs(qstart), dnq(seq_nq), dbt(btab);
  int64_t n_splits = 1;
  if (split_len > 0) n_splits = (96 + split_len - 1) / split_len;
  DeviceArray<float> dpart(size_t(T * heads * n_splits * (hd + 2)));
  dout.poison();
  dpart.poison();
  cuda::AttentionArgs a;
  a.q = dq.get(), a.ldq = qd, a.out = dout.get(), a.ldo = qd, a.kv = layout_of(c, 16, dkv.get());
  a.layer = 1, a.n_heads = heads, a.scale = 1.0f / std::sqrt(float(hd)), a.window = window;
  a.n_tok = T, a.n_seq = 2, a.tok_pos = dpos.get(), a.tok_seq = dseq.get(), a.block_tables = dbt.get();
  a.max_blocks = MB, a.seq_qstart = dqs.get(), a.seq_nq = dnq.get(), a.max_nq = std::max(nq[0], nq[1]);
  a.partial = dpart.get(), a.n_splits = n_splits, a.split_len = split_len > 0 ? split_len : 96;
  if (prefill) cuda::attention_prefill(a, nullptr);
  else cuda::attention_decode(a, nullptr);
  const auto got = dout.download();
  std::vector<float> ref(size_t(T * qd));
  for (size_t s = 0; s < 2; ++s) {
    AttentionArgs r;
    r.q = q.data() + qstart[s] * qd, r.n_q = nq[s], r.pos0 = seqs[s]->n_tokens - nq[s], r.layer = 1;
    r.n_heads = heads, r.scale = a.scale, r.window = window, r.out = ref.data() + qstart[s] * qd;
    attention_paged_reference(r, f.kv, *seqs[s]);
  }
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(got[i], ref[i], 2e-5 * (1 + std::fabs(ref[i]))) << "element " << i;
}

TEST(CudaKernels, AttentionDecodeSplitKvMatchesReference) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::cuda_test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int64_t hd : {32, 48, 64, 128})
    for (int64_t split : {0, 16, 32})
      for (int64_t window : {0, 20}) check_attention(rng, hd, 8, 2, window, false, split);
  check_attention(rng, 64, 8, 8, 0, false, 16);  // no GQA
  check_attention(rng, 64, 8, 1, 0, false, 0);   // group of 8
}

TEST(CudaKernels, AttentionPrefillMatchesReference) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::cuda_test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int64_t hd : {32, 48, 64, 128})
    for (int64_t window : {0, 20}) check_attention(rng, hd, 6, 2, window, true, 0);
}

TEST(CudaKernels, DecodeSplitsCoverTheContext) {
  for (int64_t ctx : {1, 16, 96, 128, 129, 2048, 4096, 131072}) {
    int64_t n = 0, len = 0;
    cuda::decode_splits(ctx, n, len);
    EXPECT_GE(n * len, ctx);
    EXPECT_LE(n, 64);
    EXPECT_EQ(len % 16, 0);
  }
}

}  // namespace
}  // namespace anybit

#else

TEST(CudaKernels, SkippedWithoutCuda) { GTEST_SKIP() << "built without CUDA: GPU kernel tests skipped"; }

#endif
