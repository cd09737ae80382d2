// The QBITS GEMV (kernels/matmul_qbits_cuda.cu) against an fp64 host reference built from
// QuantizedWeight::dequantize_row, with the input op and 1/input_scale applied on the host.
// Fresh random weights and inputs each run (seed printed on failure; ANYBIT_TEST_SEED
// replays), outputs poisoned with NaN first. Skipped when no CUDA device is visible.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "test_cuda_util.h"
#include "test_qbits_util.h"

#ifdef ANYBIT_WITH_CUDA
#include "core/error.h"
#include "kernels/cuda_kernels.h"
#include "kernels/qbits_cuda_pack.h"
#include "kernels/scalar_ref.h"

namespace anybit {
namespace {

using test::DeviceArray;

using test::randn;

// An fp32 sum of k terms is within k * 2^-24 * sum |term| of the exact one; the kernel
// sums the chunks' x * (q - round z) and frac(z) * sum x separately, so its fp32 terms are
// bounded by |x| s (|q| + |z|).
double qdot_tol(int64_t k, double abs_sum) { return 4.0 * double(k + 64) / double(1 << 24) * abs_sum + 1e-6; }
// The f16 part (A16): x is rounded to f16 (relative 2^-11 each, bounded by 2^-10 sum |x w|
// with the rounding of x * s), and each half lane of a chunk accumulates 16 products
// x (q - round z) in f16, every step within 2^-11 of the partial sum, which is at most the
// sum of the products' magnitudes: 16 * 2^-11 = 2^-7 of sum |x| s |q - round z|.
double a16_tol(double h_sum, double xw_sum) { return h_sum / 128.0 + xw_sum / 1024.0; }

// Runs the enclosing test once per GEMV kernel: the tensor-core one and the SIMT one
// (forced), restoring the automatic choice afterwards.
struct GemvPath {
  explicit GemvPath(bool tc) { cuda::set_qbits_gemv_tc(tc ? 1 : 0); }
  ~GemvPath() { cuda::set_qbits_gemv_tc(2); }
};
const char* path_name(bool tc) { return tc ? "tensor-core GEMV" : "SIMT GEMV"; }

struct Weight {
  QuantizedWeight q;
  cuda::QbitsDeviceAlloc dev;
  std::vector<float> deq;  // rows x cols, dequantize_row
  std::vector<float> mag;  // rows x cols, s * (|code| + |zero|)
  std::vector<float> hmag;  // rows x cols, s * |code - round(zero)|: the f16 products' size
  explicit Weight(QuantizedWeight w) : q(std::move(w)) {
    dev = cuda::upload_qbits(pack_qbits_for_gpu(q));
    deq.resize(size_t(q.rows * q.cols));
    mag.resize(deq.size());
    hmag.resize(deq.size());
    const int64_t G = q.groups_per_row();
    for (int64_t r = 0; r < q.rows; ++r) {
      q.dequantize_row(r, deq.data() + r * q.cols);
      for (int64_t c = 0; c < q.cols; ++c) {
        const int64_t g = c / q.group;
        mag[size_t(r * q.cols + c)] =
            std::fabs(q.scales[size_t(r * G + g)]) * (float(q.code(r, c)) + std::fabs(q.zero(r, g)));
        hmag[size_t(r * q.cols + c)] =
            std::fabs(q.scales[size_t(r * G + g)]) * std::fabs(float(q.code(r, c)) - std::nearbyint(q.zero(r, g)));
      }
    }
  }
  ~Weight() { cuda::free_qbits(dev); }
  Weight(const Weight&) = delete;
  Weight& operator=(const Weight&) = delete;
};

// Host op(x) / input_scale, m x K.
std::vector<double> host_input(const Weight& w, const std::vector<float>& x, int64_t m, int64_t ldx, cuda::InputOp op,
                               const std::vector<float>& nw) {
  const int64_t K = w.q.cols;
  std::vector<float> xin(size_t(m * K));
  if (op == cuda::InputOp::RmsNorm) {
    for (int64_t i = 0; i < m; ++i)
      scalar::rmsnorm(x.data() + i * ldx, nw.data(), DType::F32, 1, K, 1e-5f, xin.data() + i * K);
  } else if (op == cuda::InputOp::SiluMul) {
    scalar::silu_mul(x.data(), x.data() + K, m, K, ldx, xin.data());
  } else {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < K; ++c) xin[size_t(i * K + c)] = x[size_t(i * ldx + c)];
  }
  std::vector<double> out(xin.begin(), xin.end());
  if (!w.q.input_scale.empty())
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < K; ++c) out[size_t(i * K + c)] /= double(w.q.input_scale[size_t(c)]);
  return out;
}

// Row i of op(x) (host_input, m x K) against weight row n of the dequantized weight:
// the exact dot product, and the sum of |x w| the tolerances scale with.
double dequant_dot(const Weight& w, const std::vector<double>& xin, int64_t i, int64_t n, double& xw) {
  const int64_t K = w.q.cols;
  double ref = 0;
  xw = 0;
  for (int64_t c = 0; c < K; ++c) {
    const double p = xin[size_t(i * K + c)] * w.deq[size_t(n * K + c)];
    ref += p;
    xw += std::fabs(p);
  }
  return ref;
}

void check_gemv(std::mt19937_64& rng, const Weight& w, int64_t m, cuda::InputOp op, bool bias, bool accumulate) {
  const int64_t N = w.q.rows, K = w.q.cols;
  SCOPED_TRACE(fmt::format("bits={} group={} asym={} inscale={} N={} K={} m={} op={} bias={} acc={}", w.q.bits, w.q.group,
                           w.q.asymmetric, !w.q.input_scale.empty(), N, K, m, int(op), bias, accumulate));
  const int64_t ldx = (op == cuda::InputOp::SiluMul ? 2 * K : K) + 4 * int64_t(rng() % 2);
  const int64_t ldy = N + int64_t(rng() % 3);
  const auto x = randn(rng, size_t(m * ldx)), nw = randn(rng, size_t(K)), b = randn(rng, size_t(N));
  const auto y0 = randn(rng, size_t(m * ldy));
  const auto xin = host_input(w, x, m, ldx, op, nw);

  DeviceArray<float> dx(x), dnw(nw), db(b), dy(size_t(m * ldy));
  if (accumulate) dy.upload(y0);
  else dy.poison();
  cuda::LinearArgs a;
  a.x = dx.get(), a.m = m, a.ldx = ldx, a.op = op, a.norm_w = dnw.get(), a.eps = 1e-5f;
  a.bias = bias ? db.get() : nullptr, a.accumulate = accumulate, a.y = dy.get(), a.ldy = ldy;
  cuda::gemv_qbits(a, w.dev.w, nullptr);
  const auto y = dy.download();
  for (int64_t i = 0; i < m; ++i)
    for (int64_t n = 0; n < N; ++n) {
      double ref = 0, abs_sum = 0, h_sum = 0, xw_sum = 0;
      for (int64_t c = 0; c < K; ++c) {
        const double xv = xin[size_t(i * K + c)];
        ref += xv * w.deq[size_t(n * K + c)];
        abs_sum += std::fabs(xv) * w.mag[size_t(n * K + c)];
        h_sum += std::fabs(xv) * w.hmag[size_t(n * K + c)];
        xw_sum += std::fabs(xv * w.deq[size_t(n * K + c)]);
      }
      if (bias) ref += b[size_t(n)], abs_sum += std::fabs(b[size_t(n)]);
      if (accumulate) ref += y0[size_t(i * ldy + n)], abs_sum += std::fabs(y0[size_t(i * ldy + n)]);
      const float got = y[size_t(i * ldy + n)];
      ASSERT_TRUE(std::isfinite(got)) << "row " << i << " col " << n << " not written";
      ASSERT_NEAR(got, ref, qdot_tol(K, abs_sum) + a16_tol(h_sum, xw_sum)) << "row " << i << " col " << n;
    }
  // Padding between output rows must stay untouched (poison when not accumulating).
  for (int64_t i = 0; i < m; ++i)
    for (int64_t n = N; n < ldy; ++n) {
      const float got = y[size_t(i * ldy + n)];
      if (accumulate) ASSERT_EQ(got, y0[size_t(i * ldy + n)]) << "padding written";
      else ASSERT_TRUE(std::isnan(got)) << "padding written";
    }
}

TEST(CudaQbits, GemvMatchesDequantizedReference) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (bool tc : {true, false}) {
    const GemvPath path(tc);
    SCOPED_TRACE(path_name(tc));
    for (int bits = 2; bits <= 8; ++bits)
      for (int group : {32, 64, 128})
        for (bool asym : {false, true})
          for (bool inscale : {false, true}) {
            test::QSpec s;
            s.bits = bits, s.group = group, s.asym = asym, s.input_scale = inscale;
            s.rows = int64_t(1 + rng() % 150);
            s.cols = int64_t(group) * int64_t(1 + rng() % (1024 / group));
            s.f32_meta = rng() % 4 == 0;
            const Weight w(test::random_qweight(s, rng));
            for (int64_t m : {1, 2, 3, 4, 7, 12, 16})
              for (auto op : {cuda::InputOp::None, cuda::InputOp::RmsNorm, cuda::InputOp::SiluMul}) {
                check_gemv(rng, w, m, op, rng() % 2 == 0, rng() % 2 == 0);
                if (HasFatalFailure()) return;
              }
          }
  }
}

// Groups that are not 1, 2, 4 or 8 chunks (the SIMT GEMV then divides for each chunk's group
// instead of stepping it; the tensor-core GEMV does not take them), at row counts that leave
// a partial last group of 4 rows (it reads the zero rows upload_qbits pads with).
TEST(CudaQbits, GemvOtherGroupSizes) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int group : {96, 160, 512, 1024})
    for (int bits : {3, 4, 6})
      for (bool asym : {false, true}) {
        test::QSpec s;
        s.bits = bits, s.group = group, s.asym = asym, s.input_scale = rng() % 2 == 0;
        s.rows = int64_t(4 * (1 + rng() % 40) + 1 + rng() % 3);
        s.cols = int64_t(group) * int64_t(1 + rng() % (4096 / group));
        s.f32_meta = rng() % 3 == 0;
        const Weight w(test::random_qweight(s, rng));
        for (int64_t m : {1, 3})
          for (auto op : {cuda::InputOp::None, cuda::InputOp::RmsNorm}) {
            check_gemv(rng, w, m, op, rng() % 2 == 0, rng() % 2 == 0);
            if (HasFatalFailure()) return;
          }
      }
}

// Shapes that take the other code paths: split-K over 2..8 warps (small N, long K), x
// staged beyond 48 KiB of shared memory (long K at m = 4), many row groups per warp, row
// groups interleaved over the blocks (N and K >= 4096).
TEST(CudaQbits, GemvSplitKAndUnstagedPaths) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  struct Case {
    int bits;
    int64_t n, k;
  };
  for (bool tc : {true, false}) {
    const GemvPath path(tc);
    SCOPED_TRACE(path_name(tc));
    for (const Case& c : {Case{4, 40, 4096}, Case{2, 37, 8192}, Case{3, 9, 16384}, Case{8, 6, 16384}, Case{5, 3000, 256},
                          Case{7, 2, 2048}, Case{6, 1030, 12288}, Case{3, 4100, 4096}}) {
      test::QSpec s;
      s.bits = c.bits, s.group = 128, s.asym = rng() % 2 == 0, s.input_scale = rng() % 2 == 0;
      s.rows = c.n, s.cols = c.k;
      const Weight w(test::random_qweight(s, rng));
      for (int64_t m : {1, 2, 4, 16})
        for (auto op : {cuda::InputOp::None, cuda::InputOp::RmsNorm, cuda::InputOp::SiluMul}) {
          check_gemv(rng, w, m, op, true, op == cuda::InputOp::SiluMul);
          if (HasFatalFailure()) return;
        }
    }
  }
}

// The fused gate|up epilogue: rows interleave gate and up, y[i][j] = silu(gate_j) * up_j.
TEST(CudaQbits, GemvSiluPairs) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (bool tc : {true, false}) {
    const GemvPath path(tc);
    SCOPED_TRACE(path_name(tc));
    for (int bits : {2, 4, 5, 8})
      for (int64_t m : {1, 3, 4, 6, 11}) {
        test::QSpec s;
        s.bits = bits, s.group = 64, s.asym = bits == 5, s.input_scale = bits == 8;
        s.rows = 2 * int64_t(1 + rng() % 200), s.cols = 64 * int64_t(1 + rng() % 16);
        const Weight w(test::random_qweight(s, rng));
        const int64_t N = s.rows, K = s.cols;
        SCOPED_TRACE(fmt::format("pairs bits={} N={} K={} m={}", bits, N, K, m));
        const auto x = randn(rng, size_t(m * K)), nw = randn(rng, size_t(K)), b = randn(rng, size_t(N));
        const auto xin = host_input(w, x, m, K, cuda::InputOp::RmsNorm, nw);
        DeviceArray<float> dx(x), dnw(nw), db(b), dy(size_t(m * N / 2));
        dy.poison();
        cuda::LinearArgs a;
        a.x = dx.get(), a.m = m, a.ldx = K, a.op = cuda::InputOp::RmsNorm, a.norm_w = dnw.get(), a.bias = db.get();
        a.silu_pairs = true, a.y = dy.get(), a.ldy = N / 2;
        cuda::gemv_qbits(a, w.dev.w, nullptr);
        const auto y = dy.download();
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < N / 2; ++j) {
            double g = b[size_t(2 * j)], u = b[size_t(2 * j + 1)], ga = std::fabs(g), ua = std::fabs(u);
            double gh = 0, uh = 0, gx = 0, ux = 0;
            for (int64_t c = 0; c < K; ++c) {
              const double xv = xin[size_t(i * K + c)];
              const size_t gi = size_t(2 * j * K + c), ui = size_t((2 * j + 1) * K + c);
              g += xv * w.deq[gi], ga += std::fabs(xv) * w.mag[gi];
              u += xv * w.deq[ui], ua += std::fabs(xv) * w.mag[ui];
              gh += std::fabs(xv) * w.hmag[gi], uh += std::fabs(xv) * w.hmag[ui];
              gx += std::fabs(xv * w.deq[gi]), ux += std::fabs(xv * w.deq[ui]);
            }
            const double ref = g / (1.0 + std::exp(-g)) * u;
            // silu has slope <= 1.1 and |silu(g)| <= |g| + 1.
            const double tg = qdot_tol(K, ga) + a16_tol(gh, gx), tu = qdot_tol(K, ua) + a16_tol(uh, ux);
            const double tol = 1.1 * (std::fabs(u) + tu) * tg + (std::fabs(g) + tg + 1) * tu + 1e-6;
            const float got = y[size_t(i * N / 2 + j)];
            ASSERT_TRUE(std::isfinite(got)) << "row " << i << " col " << j << " not written";
            ASSERT_NEAR(got, ref, tol) << "row " << i << " col " << j;
          }
      }
  }
}

// With x in {-1, 0, 1} every f16 product and partial sum of the kernel is exact (the
// sums stay below 2048 half-units), so the only error left is fp32 rounding across chunks:
// a tight check that catches a single wrong code, scale or zero anywhere in the layout
// (on the tensor-core path with 128-column groups; shorter groups round the weights).
TEST(CudaQbits, GemvExactOnSmallIntegerInputs) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (bool tc : {true, false}) {
    const GemvPath path(tc);
    SCOPED_TRACE(path_name(tc));
    for (int bits = 2; bits <= 8; ++bits)
      for (bool asym : {false, true}) {
        if (asym && bits == 8) continue;  // |q - z| up to 255: 16 of them exceed f16's exact range
        test::QSpec s;
        s.bits = bits, s.group = 32 << (rng() % 3), s.asym = asym;
        s.rows = int64_t(1 + rng() % 70), s.cols = int64_t(s.group) * int64_t(1 + rng() % (2048 / s.group));
        s.f32_meta = asym && rng() % 2 == 0;  // fractional zeros: the frac(z) * sum x path
        const Weight w(test::random_qweight(s, rng));
        const int64_t N = s.rows, K = s.cols;
        for (int64_t m : {1, 2, 4, 13}) {
          SCOPED_TRACE(fmt::format("exact bits={} asym={} group={} N={} K={} m={}", bits, asym, s.group, N, K, m));
          std::vector<float> x(size_t(m * K));
          for (auto& v : x) v = float(int(rng() % 3) - 1);
          x[size_t(rng() % x.size())] = 1.0f;  // max |x| = 1 in at least one row
          DeviceArray<float> dx(x), dy(size_t(m * N));
          dy.poison();
          cuda::LinearArgs a;
          a.x = dx.get(), a.m = m, a.ldx = K, a.y = dy.get(), a.ldy = N;
          cuda::gemv_qbits(a, w.dev.w, nullptr);
          const auto y = dy.download();
          for (int64_t i = 0; i < m; ++i)
            for (int64_t n = 0; n < N; ++n) {
              double ref = 0, abs_sum = 0, xw_sum = 0;
              for (int64_t c = 0; c < K; ++c) {
                ref += double(x[size_t(i * K + c)]) * w.deq[size_t(n * K + c)];
                abs_sum += std::fabs(x[size_t(i * K + c)]) * w.mag[size_t(n * K + c)];
                xw_sum += std::fabs(double(x[size_t(i * K + c)]) * w.deq[size_t(n * K + c)]);
              }
              // The tensor-core GEMV scales groups shorter than its 128-column step before
              // the mma: each weight rounded to f16 once (2^-11 relative), nothing else.
              const double wround = tc && s.group != 128 ? xw_sum / 1024.0 : 0.0;
              ASSERT_NEAR(y[size_t(i * N + n)], ref, qdot_tol(K, abs_sum) + wround) << "row " << i << " col " << n;
            }
        }
      }
  }
}

// The prefill path (dequantize to bf16 + GEMM): bf16 rounding of every weight (2^-9
// relative) on top of the GEMM's own error.
TEST(CudaQbits, GemmPathMatchesDequantizedReference) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int bits : {2, 3, 4, 6, 8}) {
    test::QSpec s;
    s.bits = bits, s.group = 64, s.asym = bits % 2 == 1, s.input_scale = bits == 4;
    s.rows = int64_t(8 + rng() % 300), s.cols = 64 * int64_t(1 + rng() % 24);
    const Weight w(test::random_qweight(s, rng));
    const int64_t N = s.rows, K = s.cols;
    for (int64_t m : {5, 17, 40}) {
      SCOPED_TRACE(fmt::format("gemm bits={} N={} K={} m={}", bits, N, K, m));
      const auto x = randn(rng, size_t(m * K));
      const auto xin = host_input(w, x, m, K, cuda::InputOp::None, {});
      DeviceArray<float> dx(x), dy(size_t(m * N));
      DeviceArray<uint8_t> scratch(cuda::qbits_scratch_bytes(w.dev.w) + 256);
      dy.poison();
      cuda::LinearArgs a;
      a.x = dx.get(), a.m = m, a.ldx = K, a.y = dy.get(), a.ldy = N;
      cuda::gemm_qbits(a, w.dev.w, scratch.get(), nullptr);
      const auto y = dy.download();
      for (int64_t i = 0; i < m; ++i)
        for (int64_t n = 0; n < N; ++n) {
          double xw = 0;
          double ref = dequant_dot(w, xin, i, n, xw);
          ASSERT_NEAR(y[size_t(i * N + n)], ref, xw / 256.0 + 1e-5) << "row " << i << " col " << n;
        }
    }
  }
}

// The tensor-core path (mma_qbits, batched decode): every width, symmetric and asymmetric
// (fractional zeros), input scales, m around the 8-token tiles up to kMmaMaxRows, N not a
// multiple of the 64-row block, K not a multiple of the 256-column slice, bias and
// accumulate. Error: x' and each weight rounded to f16 once (2^-11 relative each, plus
// the scale's own rounding), fp32 sums: within 2^-9 of sum |x w|; bound used: 2^-8.
TEST(CudaQbits, MmaPathMatchesDequantizedReference) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  int case_no = 0;
  for (int bits = 2; bits <= 8; ++bits) {
    test::QSpec s;
    s.bits = bits, s.group = bits % 3 == 0 ? 32 : 64, s.asym = bits % 2 == 1, s.input_scale = bits == 4 || bits == 7;
    s.rows = int64_t(8 + rng() % 300), s.cols = 64 * int64_t(1 + rng() % 40);
    const Weight w(test::random_qweight(s, rng));
    const int64_t N = s.rows, K = s.cols;
    for (int64_t m : {int64_t(5), int64_t(8), int64_t(9), int64_t(16), int64_t(23), int64_t(33), cuda::kMmaMaxRows}) {
      const bool bias = case_no % 3 == 1, accumulate = case_no % 4 == 2;
      ++case_no;
      SCOPED_TRACE(fmt::format("mma bits={} N={} K={} m={} bias={} accumulate={}", bits, N, K, m, bias, accumulate));
      const int64_t ldx = K + 32 * int64_t(rng() % 2), ldy = N + int64_t(rng() % 3);
      const auto x = randn(rng, size_t(m * ldx));
      const auto xin = host_input(w, x, m, ldx, cuda::InputOp::None, {});
      const auto b = randn(rng, size_t(N)), y0 = randn(rng, size_t(m * ldy));
      DeviceArray<float> dx(x), db(b), dy(y0);
      DeviceArray<uint8_t> scratch(cuda::qbits_mma_scratch_bytes(w.dev.w) + 256);
      if (!accumulate) dy.poison();
      cuda::LinearArgs a;
      a.x = dx.get(), a.m = m, a.ldx = ldx, a.y = dy.get(), a.ldy = ldy, a.accumulate = accumulate;
      if (bias) a.bias = db.get();
      cuda::mma_qbits(a, w.dev.w, scratch.get(), nullptr);
      const auto y = dy.download();
      for (int64_t i = 0; i < m; ++i)
        for (int64_t n = 0; n < N; ++n) {
          double xw = 0;
          double ref = dequant_dot(w, xin, i, n, xw);
          if (bias) ref += b[size_t(n)];
          if (accumulate) ref += y0[size_t(i * ldy + n)];
          ASSERT_NEAR(y[size_t(i * ldy + n)], ref, xw / 256.0 + 1e-5) << "row " << i << " col " << n;
        }
      if (!accumulate)  // columns past N untouched: still the poison
        for (int64_t i = 0; i < m; ++i)
          for (int64_t n = N; n < ldy; ++n) ASSERT_TRUE(std::isnan(y[size_t(i * ldy + n)])) << "wrote past N";
    }
  }
}

// Captured into a CUDA graph and replayed, the GEMV gives bit-identical results.
TEST(CudaQbits, GemvGraphCaptureMatchesDirectLaunch) {
  ANYBIT_REQUIRE_CUDA();
  std::mt19937_64 rng(test::qbits_seed());
  test::QSpec s;
  s.bits = 4, s.group = 128, s.rows = 300, s.cols = 2048, s.asym = true;
  const Weight w(test::random_qweight(s, rng));
  const int64_t m = 3;
  const auto x = randn(rng, size_t(m * s.cols)), nw = randn(rng, size_t(s.cols));
  DeviceArray<float> dx(x), dnw(nw), dy1(size_t(m * s.rows)), dy2(size_t(m * s.rows));
  cuda::LinearArgs a;
  a.x = dx.get(), a.m = m, a.ldx = s.cols, a.op = cuda::InputOp::RmsNorm, a.norm_w = dnw.get(), a.y = dy1.get(),
  a.ldy = s.rows;
  dy1.poison(), dy2.poison();
  cuda::gemv_qbits(a, w.dev.w, nullptr);
  const auto direct = dy1.download();
  cudaStream_t st = nullptr;
  ANYBIT_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaGraph_t g = nullptr;
  cudaGraphExec_t ge = nullptr;
  a.y = dy2.get();
  ANYBIT_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
  cuda::gemv_qbits(a, w.dev.w, st);
  ANYBIT_CUDA_CHECK(cudaStreamEndCapture(st, &g));
  ANYBIT_CUDA_CHECK(cudaGraphInstantiate(&ge, g, 0));
  ANYBIT_CUDA_CHECK(cudaGraphLaunch(ge, st));
  ANYBIT_CUDA_CHECK(cudaStreamSynchronize(st));
  const auto replay = dy2.download();
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  cudaStreamDestroy(st);
  for (size_t i = 0; i < direct.size(); ++i) ASSERT_EQ(std::memcmp(&direct[i], &replay[i], 4), 0) << i;
}

TEST(CudaQbits, RefusesUnsupportedArguments) {
  ANYBIT_REQUIRE_CUDA();
  std::mt19937_64 rng(3);
  test::QSpec s;
  s.bits = 4, s.group = 32, s.rows = 7, s.cols = 64;
  const Weight w(test::random_qweight(s, rng));
  DeviceArray<float> dx(size_t(2 * 64 + 8)), dy(size_t(64));
  cuda::LinearArgs a;
  a.x = dx.get(), a.m = 1, a.ldx = 64, a.y = dy.get(), a.ldy = 7;
  a.ldx = 65;
  EXPECT_THROW(cuda::gemv_qbits(a, w.dev.w, nullptr), Error);  // odd ldx
  a.ldx = 64, a.x = dx.get() + 1;
  EXPECT_THROW(cuda::gemv_qbits(a, w.dev.w, nullptr), Error);  // x not 8-byte aligned
  a.x = dx.get(), a.m = 5;
  EXPECT_THROW(cuda::gemm_qbits(a, w.dev.w, nullptr, nullptr), Error);  // no scratch
  a.m = 1;
  a.x = dx.get(), a.silu_pairs = true;
  EXPECT_THROW(cuda::gemv_qbits(a, w.dev.w, nullptr), Error);  // odd N
  a.silu_pairs = false, a.op = cuda::InputOp::RmsNorm, a.norm_w = nullptr;
  EXPECT_THROW(cuda::gemv_qbits(a, w.dev.w, nullptr), Error);  // no norm weight
  // W*A8 weights run a8_qbits (test_cuda_qbits_a8.cpp); the A16 GEMV refuses them.
  test::QSpec s8 = s;
  s8.act_bits = 8;
  const Weight w8(test::random_qweight(s8, rng));
  a.silu_pairs = false, a.op = cuda::InputOp::None;
  EXPECT_THROW(cuda::gemv_qbits(a, w8.dev.w, nullptr), Error);
}

}  // namespace
}  // namespace anybit

#else
TEST(CudaQbits, SkippedWithoutCuda) { GTEST_SKIP() << "built without CUDA: QBITS GPU tests skipped"; }
#endif
