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
#include "kernels/cuda_kernels.h"
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

}  // namespace
}  // namespace anybit

#else

TEST(CudaKernels, SkippedWithoutCuda) { GTEST_SKIP() << "built without CUDA: GPU kernel tests skipped"; }

#endif
