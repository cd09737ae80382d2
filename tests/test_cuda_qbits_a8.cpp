// The W*A8 path (act_bits 8, kernels/matmul_qbits_a8_cuda.cu) against a host reference of
// the format's semantics (kernels/matmul_qbits_scalar.cpp): op(x) * (1/input_scale) per token
// quantized to int8 with scale amax / 127, times the dequantized weights, summed in double.
// Fresh random weights and inputs each run (seed printed on failure; ANYBIT_TEST_SEED
// replays), outputs poisoned first. Skipped when no CUDA device is visible.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "test_cuda_util.h"
#include "test_qbits_util.h"

#ifdef ANYBIT_WITH_CUDA
#include "core/error.h"
#include "kernels/cuda_kernels.h"
#include "kernels/qbits_cuda_pack.h"

namespace anybit {
namespace {

using test::DeviceArray;
using test::randn;

struct Weight {
  QuantizedWeight q;
  cuda::QbitsDeviceAlloc dev;
  std::vector<float> deq;  // rows x cols, dequantize_row
  std::vector<float> mag;  // rows x cols, s * (code + |zero|): the size of the kernel's fp32 terms
  explicit Weight(QuantizedWeight w) : q(std::move(w)) {
    dev = cuda::upload_qbits(pack_qbits_for_gpu(q));
    deq.resize(size_t(q.rows * q.cols));
    mag.resize(deq.size());
    const int64_t G = q.groups_per_row();
    for (int64_t r = 0; r < q.rows; ++r) {
      q.dequantize_row(r, deq.data() + r * q.cols);
      for (int64_t c = 0; c < q.cols; ++c)
        mag[size_t(r * q.cols + c)] = std::fabs(q.scales[size_t(r * G + c / q.group)]) *
                                      (float(q.code(r, c)) + std::fabs(q.zero(r, c / q.group)));
    }
  }
  ~Weight() { cuda::free_qbits(dev); }
  Weight(const Weight&) = delete;
  Weight& operator=(const Weight&) = delete;
};

// One token row quantized as the format says. The host's op(x) may differ from the kernel's
// in the last bit (RMSNorm's sum, expf), so codes whose x' * 127 / amax lies within 2e-3 of
// a rounding boundary are marked: either rounding is correct there.
struct TokenRow {
  std::vector<float> q;  // codes
  std::vector<bool> edge;
  double xs = 0;
};

TokenRow quantize_row(const Weight& w, const float* x, cuda::InputOp op, const std::vector<float>& nw) {
  const int64_t K = w.q.cols;
  std::vector<float> v(static_cast<size_t>(K));
  float r = 1.0f;
  if (op == cuda::InputOp::RmsNorm) {
    double ss = 0;
    for (int64_t c = 0; c < K; ++c) ss += double(x[c]) * double(x[c]);
    r = 1.0f / std::sqrt(float(ss / double(K)) + 1e-5f);
  }
  for (int64_t c = 0; c < K; ++c) {
    float t = x[c];
    if (op == cuda::InputOp::RmsNorm) t = t * r * nw[size_t(c)];
    if (op == cuda::InputOp::SiluMul) t = t / (1.0f + std::exp(-t)) * x[K + c];
    if (!w.q.input_scale.empty()) t *= 1.0f / w.q.input_scale[size_t(c)];
    v[size_t(c)] = t;
  }
  float amax = 0;
  for (float t : v) amax = std::fmax(amax, std::fabs(t));
  TokenRow row;
  row.q.resize(size_t(K));
  row.edge.resize(size_t(K));
  const float qinv = amax > 0 ? 127.0f / amax : 0.0f;
  for (int64_t c = 0; c < K; ++c) {
    const float t = v[size_t(c)] * qinv;
    row.q[size_t(c)] = std::fmax(-127.0f, std::fmin(127.0f, std::nearbyint(t)));
    row.edge[size_t(c)] = std::fabs(std::fabs(t - std::trunc(t)) - 0.5f) < 2e-3f;
  }
  row.xs = double(amax / 127.0f);
  return row;
}

struct Case {
  int64_t m = 1;
  cuda::InputOp op = cuda::InputOp::None;
  bool bias = false, accumulate = false, pairs = false;
};

void check_a8(std::mt19937_64& rng, const Weight& w, const Case& k) {
  const int64_t N = w.q.rows, K = w.q.cols, m = k.m, outs = k.pairs ? N / 2 : N;
  SCOPED_TRACE(fmt::format("bits={} group={} asym={} inscale={} N={} K={} m={} op={} bias={} acc={} pairs={}", w.q.bits,
                           w.q.group, w.q.asymmetric, !w.q.input_scale.empty(), N, K, m, int(k.op), k.bias,
                           k.accumulate, k.pairs));
  const int64_t ldx = (k.op == cuda::InputOp::SiluMul ? 2 * K : K) + 4 * int64_t(rng() % 2);
  const int64_t ldy = outs + int64_t(rng() % 3);
  const auto x = randn(rng, size_t(m * ldx)), nw = randn(rng, size_t(K)), b = randn(rng, size_t(N));
  const auto y0 = randn(rng, size_t(m * ldy));

  DeviceArray<float> dx(x), dnw(nw), db(b), dy(size_t(m * ldy));
  DeviceArray<uint8_t> scratch(cuda::qbits_scratch_bytes(w.dev.w));
  if (k.accumulate) dy.upload(y0);
  else dy.poison();
  cuda::LinearArgs a;
  a.x = dx.get(), a.m = m, a.ldx = ldx, a.op = k.op, a.norm_w = dnw.get(), a.eps = 1e-5f;
  a.bias = k.bias ? db.get() : nullptr, a.accumulate = k.accumulate, a.silu_pairs = k.pairs;
  a.y = dy.get(), a.ldy = ldy;
  cuda::linear_qbits(a, w.dev.w, scratch.get(), nullptr);  // routes act_bits 8 to a8_qbits
  const auto y = dy.download();

  const int64_t G = w.q.groups_per_row();
  for (int64_t i = 0; i < m; ++i) {
    const TokenRow tr = quantize_row(w, x.data() + i * ldx, k.op, nw);
    // Value, and bound, of weight row n: fp32 group terms (4 (G + 2) 2^-24 of their sizes),
    // 1e-6 relative for the token scale, and the marked codes' possible step.
    auto row_value = [&](int64_t n, double& tol) {
      double ref = 0, terms = 0, edge = 0;
      for (int64_t c = 0; c < K; ++c) {
        const double qv = tr.q[size_t(c)];
        ref += qv * w.deq[size_t(n * K + c)];
        terms += std::fabs(qv) * w.mag[size_t(n * K + c)];
        if (tr.edge[size_t(c)]) edge += std::fabs(w.deq[size_t(n * K + c)]);
      }
      tol = tr.xs * (4.0 * double(G + 2) / double(1 << 24) * terms + 1e-6 * std::fabs(ref) + edge) + 1e-6;
      return tr.xs * ref + (k.bias ? b[size_t(n)] : 0.0f);
    };
    for (int64_t j = 0; j < outs; ++j) {
      double ref, tol;
      if (k.pairs) {
        double tg, tu;
        const double gt = row_value(2 * j, tg), up = row_value(2 * j + 1, tu);
        const double sg = 1.0 / (1.0 + std::exp(-gt));
        ref = gt * sg * up;
        // d(silu(g) u) = u silu'(g) dg + silu(g) du, |silu'| <= 1.1.
        tol = 1.1 * std::fabs(up) * tg + std::fabs(gt * sg) * tu + 1e-5 * std::fabs(ref) + 1e-6;
      } else {
        ref = row_value(j, tol);
        if (k.accumulate) ref += y0[size_t(i * ldy + j)], tol += 1e-6 * std::fabs(y0[size_t(i * ldy + j)]);
      }
      const float got = y[size_t(i * ldy + j)];
      ASSERT_TRUE(std::isfinite(got)) << "row " << i << " out " << j << " not written";
      ASSERT_NEAR(got, ref, tol) << "row " << i << " out " << j;
    }
    for (int64_t j = outs; j < ldy; ++j) {
      const float got = y[size_t(i * ldy + j)];
      if (k.accumulate) ASSERT_EQ(got, y0[size_t(i * ldy + j)]) << "padding written";
      else ASSERT_TRUE(std::isnan(got)) << "padding written";
    }
  }
}

test::QSpec a8_spec(int bits, int group, bool asym, bool inscale, int64_t rows, int64_t cols) {
  test::QSpec s;
  s.bits = bits, s.group = group, s.asym = asym, s.input_scale = inscale, s.act_bits = 8;
  s.rows = rows, s.cols = cols;
  return s;
}

// Every width, group and zero-point mode; m from one token (split-K, one token tile) to
// several tiles of 64; every input op, bias and accumulate.
TEST(CudaQbitsA8, MatchesPerTokenInt8Reference) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int bits = 2; bits <= 8; ++bits)
    for (int group : {32, 64, 128})
      for (bool asym : {false, true}) {
        test::QSpec s = a8_spec(bits, group, asym, rng() % 2 == 0, int64_t(1 + rng() % 150),
                                int64_t(group) * int64_t(1 + rng() % (1024 / group)));
        s.f32_meta = rng() % 4 == 0;
        const Weight w(test::random_qweight(s, rng));
        for (int64_t m : {1, 3, 8, 13, 64, 70}) {
          Case k;
          k.m = m, k.op = cuda::InputOp(rng() % 3), k.bias = rng() % 2 == 0, k.accumulate = rng() % 2 == 0;
          check_a8(rng, w, k);
          if (HasFatalFailure()) return;
        }
      }
}

// Split-K shapes (few row blocks, long K), many row blocks, SiLU pairs in both epilogues
// (the GEMM's own and the split-K reduction), and more tokens than one pass holds.
TEST(CudaQbitsA8, SplitKPairsAndPasses) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  struct Shape {
    int bits, group;
    int64_t n, k;
  };
  for (const Shape& sh : {Shape{4, 128, 40, 4096}, Shape{8, 64, 96, 2048}, Shape{3, 32, 6, 8192},
                          Shape{5, 128, 3000, 256}, Shape{6, 128, 258, 1024}}) {
    const Weight w(test::random_qweight(a8_spec(sh.bits, sh.group, rng() % 2 == 0, rng() % 2 == 0, sh.n, sh.k), rng));
    for (int64_t m : {1, 4, 33, 65}) {
      Case k;
      k.m = m, k.op = cuda::InputOp(rng() % 3), k.bias = true;
      k.pairs = sh.n % 2 == 0 && rng() % 2 == 0;
      k.accumulate = !k.pairs && rng() % 2 == 0;
      check_a8(rng, w, k);
      if (HasFatalFailure()) return;
    }
  }
  // A small weight has a small scratch: 500 tokens run in several passes.
  const Weight w(test::random_qweight(a8_spec(4, 128, true, true, 8, 256), rng));
  ASSERT_LT(cuda::qbits_scratch_bytes(w.dev.w), size_t(500) * 260) << "the case no longer needs several passes";
  Case k;
  k.m = 500, k.op = cuda::InputOp::RmsNorm, k.bias = true, k.accumulate = true;
  check_a8(rng, w, k);
}

TEST(CudaQbitsA8, FpActivationPathsRefuseA8WeightsAndBack) {
  ANYBIT_REQUIRE_CUDA();
  std::mt19937_64 rng(5);
  const Weight w8(test::random_qweight(a8_spec(4, 64, false, false, 16, 128), rng));
  test::QSpec s16 = a8_spec(4, 64, false, false, 16, 128);
  s16.act_bits = 0;
  const Weight w16(test::random_qweight(s16, rng));
  DeviceArray<float> dx(size_t(8 * 128)), dy(size_t(8 * 16));
  DeviceArray<uint8_t> scratch(cuda::qbits_scratch_bytes(w8.dev.w));
  cuda::LinearArgs a;
  a.x = dx.get(), a.m = 1, a.ldx = 128, a.y = dy.get(), a.ldy = 16;
  EXPECT_THROW(cuda::gemv_qbits(a, w8.dev.w, nullptr), Error);
  a.m = 8;
  EXPECT_THROW(cuda::mma_qbits(a, w8.dev.w, scratch.get(), nullptr), Error);
  EXPECT_THROW(cuda::gemm_qbits(a, w8.dev.w, scratch.get(), nullptr), Error);
  EXPECT_THROW(cuda::a8_qbits(a, w16.dev.w, scratch.get(), nullptr), Error);
  EXPECT_THROW(cuda::a8_qbits(a, w8.dev.w, nullptr, nullptr), Error);  // no scratch
  a.silu_pairs = true, a.accumulate = true;
  EXPECT_THROW(cuda::a8_qbits(a, w8.dev.w, scratch.get(), nullptr), Error);
  test::QSpec bad = a8_spec(4, 64, false, false, 16, 128);
  bad.act_bits = 4;
  EXPECT_THROW(pack_qbits_for_gpu(test::random_qweight(bad, rng)), Error);
}

}  // namespace
}  // namespace anybit

#else
TEST(CudaQbitsA8, SkippedWithoutCuda) { GTEST_SKIP() << "built without CUDA: W*A8 GPU tests skipped"; }
#endif
