// Any-bit quantization primitives: bit packing, group quantization error bounds,
// clipping search, the scalar QBITS matmul, AWQ scaling, GPTQ, the bpw allocator.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/error.h"
#include "kernels/dispatch.h"
#include "quant/awq.h"
#include "quant/bitpack.h"
#include "quant/bpw_alloc.h"
#include "quant/gptq.h"
#include "quant/group_quant.h"
#include "quant/objective.h"

using namespace anybit;
using namespace anybit::quant;

namespace {

std::mt19937& rng() {
  static std::mt19937 g(std::random_device{}());
  return g;
}

std::vector<float> normal(size_t n, float sd = 1.0f) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng());
  return v;
}

// Inputs with correlated channels and uneven magnitudes, like real activations.
std::vector<float> correlated_inputs(int64_t m, int64_t k) {
  std::vector<float> base = normal(size_t(m * 8)), x(size_t(m * k));
  std::vector<float> mix = normal(size_t(8 * k)), mag(static_cast<size_t>(k)), noise = normal(size_t(m * k), 0.3f);
  std::uniform_real_distribution<float> u(0.2f, 3.0f);
  for (auto& v : mag) v = u(rng());
  for (int64_t t = 0; t < m; ++t)
    for (int64_t c = 0; c < k; ++c) {
      float s = noise[size_t(t * k + c)];
      for (int j = 0; j < 8; ++j) s += base[size_t(t * 8 + j)] * mix[size_t(j * k + c)];
      x[size_t(t * k + c)] = s * mag[size_t(c)];
    }
  return x;
}

std::vector<float> hessian_of(const std::vector<float>& x, int64_t m, int64_t k) {
  std::vector<float> h(size_t(k * k), 0.0f);
  for (int64_t t = 0; t < m; ++t)
    for (int64_t a = 0; a < k; ++a)
      for (int64_t b = 0; b < k; ++b) h[size_t(a * k + b)] += x[size_t(t * k + a)] * x[size_t(t * k + b)] / float(m);
  return h;
}

const KernelTable& scalar_table() { return *kernels_for(Isa::Scalar); }

}  // namespace

TEST(QuantBitpack, RoundTripsEveryWidth) {
  for (int bits = 1; bits <= 8; ++bits)
    for (int64_t n : {1, 7, 32, 100, 1027}) {
      std::uniform_int_distribution<int> d(0, (1 << bits) - 1);
      std::vector<uint8_t> codes(static_cast<size_t>(n)), back(size_t(n), 0xAB);
      for (auto& c : codes) c = uint8_t(d(rng()));
      std::vector<uint8_t> packed(packed_bytes(n, bits) + 1, 0xCD);
      pack_codes(codes.data(), n, bits, packed.data());
      EXPECT_EQ(packed.back(), 0xCD) << "wrote past the stream";
      unpack_codes(packed.data(), n, bits, back.data());
      EXPECT_EQ(codes, back) << "bits " << bits << " n " << n;
      // The stream layout is the one QuantizedWeight::code reads.
      QuantizedWeight w;
      w.bits = bits;
      w.cols = n;
      w.rows = 1;
      w.codes.assign(packed.begin(), packed.end() - 1);
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(w.code(0, i), codes[size_t(i)]);
    }
}

TEST(QuantGroup, ErrorBoundsEveryWidthGroupAndMode) {
  const int64_t rows = 16, cols = 256;
  for (int bits = 2; bits <= 8; ++bits)
    for (int group : {32, 64, 128})
      for (bool asym : {false, true})
        for (bool search : {false, true}) {
          SCOPED_TRACE(::testing::Message() << "bits " << bits << " group " << group << " asym " << asym << " search " << search);
          const std::vector<float> w = normal(size_t(rows * cols), 0.02f);
          MatrixOptions o;
          o.bits = bits;
          o.group = group;
          o.asym = asym;
          o.search = search;
          const QuantizedWeight q = quantize_rtn(w.data(), rows, cols, o, nullptr);
          ASSERT_EQ(q.codes.size(), size_t(rows) * size_t((cols * bits + 7) / 8));
          ASSERT_EQ(q.scales.size(), size_t(rows * cols / group));
          ASSERT_EQ(q.zeros.size(), asym ? q.scales.size() : 0u);
          const std::vector<float> d = dequantize(q);
          double se = 0, energy = 0;
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < cols; ++c) {
              const size_t i = size_t(r * cols + c);
              const float s = std::fabs(q.scales[size_t(r * (cols / group) + c / group)]);
              ASSERT_LE(q.code(r, c), uint32_t((1 << bits) - 1));
              const float err = std::fabs(w[i] - d[i]);
              se += double(err) * err;
              energy += double(w[i]) * w[i];
              if (!search) {
                // Plain RTN: half a step inside the range; the symmetric grid's short side
                // can clip by up to one step. The f16 scale is rounded (relative 2^-11), which
                // moves the outermost level by up to 2^(bits-1) * 2^-11 steps; asymmetric adds
                // the f16 zero rounding.
                const float f16_slack = float(1 << bits) * 0.0006f;
                ASSERT_LE(err, s * (asym ? 0.51f + 0.002f * float(1 << bits) : 1.0f + f16_slack) + 1e-7f);
              }
            }
          // Relative RMS error of Gaussian weights: ~1.6 * 2^-bits for this grid.
          const double rel = std::sqrt(se / energy);
          EXPECT_LT(rel, 2.6 * std::pow(2.0, -bits)) << "relative RMS error " << rel;
        }
}

TEST(QuantGroup, ScalesAreStoredExactlyInTheirDType) {
  const std::vector<float> w = normal(4 * 128, 0.05f);
  for (DType t : {DType::F16, DType::BF16, DType::F32}) {
    MatrixOptions o;
    o.bits = 3;
    o.asym = true;
    o.meta = t;
    const QuantizedWeight q = quantize_rtn(w.data(), 4, 128, o, nullptr);
    for (float s : q.scales) EXPECT_EQ(s, round_meta(s, t));
    for (float z : q.zeros) EXPECT_EQ(z, round_meta(z, t));
  }
}

TEST(QuantGroup, ClippingSearchNeverWorseThanRtn) {
  for (int trial = 0; trial < 200; ++trial) {
    const int bits = 2 + trial % 7;
    const bool asym = (trial / 7) % 2;
    const int n = 32 << (trial % 3);
    std::vector<float> w = normal(static_cast<size_t>(n));
    if (trial % 5 == 0) w[size_t(trial % n)] *= 8.0f;  // an outlier makes clipping pay off
    std::uniform_real_distribution<float> u(0.0f, 4.0f);
    std::vector<float> d(static_cast<size_t>(n));
    for (auto& v : d) v = u(rng());
    const GroupFormat f{bits, asym, DType::F16};
    std::vector<uint8_t> q0(static_cast<size_t>(n)), q1(static_cast<size_t>(n));
    const GroupParams p0 = rtn_params(w.data(), n, f);
    encode_group(w.data(), n, f, p0, q0.data());
    const GroupParams p1 = search_params(w.data(), d.data(), n, f, SearchOptions{}, q1.data());
    const double e0 = group_error(w.data(), d.data(), n, p0, q0.data());
    const double e1 = group_error(w.data(), d.data(), n, p1, q1.data());
    ASSERT_LE(e1, e0 * (1 + 1e-12)) << "bits " << bits << " asym " << asym;
  }
}

TEST(QuantGroup, EncodePicksTheNearestLevel) {
  const GroupFormat f{4, false, DType::F32};
  const std::vector<float> w = normal(64);
  GroupParams p{0.3f, 8.0f};
  std::vector<uint8_t> q(64);
  encode_group(w.data(), 64, f, p, q.data());
  for (size_t i = 0; i < 64; ++i)
    for (int c = 0; c < 16; ++c)
      ASSERT_LE(std::fabs(w[i] - p.scale * (float(q[i]) - p.zero)), std::fabs(w[i] - p.scale * (float(c) - p.zero)) + 1e-7f);
}

TEST(QuantMatmul, ScalarQbitsEqualsDequantizeThenF32) {
  const KernelTable& t = scalar_table();
  ASSERT_NE(t.matmul[int(DType::QBITS)], nullptr);
  for (int bits : {2, 3, 5, 8})
    for (bool with_scale : {false, true}) {
      const int64_t n = 24, k = 192, m = 5;
      const std::vector<float> w = normal(size_t(n * k));
      MatrixOptions o;
      o.bits = bits;
      o.group = 64;
      o.asym = bits % 2;
      QuantizedWeight q = quantize_rtn(w.data(), n, k, o, nullptr);
      if (with_scale) {
        q.input_scale.resize(static_cast<size_t>(k));
        std::uniform_real_distribution<float> u(0.5f, 2.0f);
        for (auto& s : q.input_scale) s = u(rng());
      }
      const std::vector<float> x = normal(size_t(m * k));
      std::vector<float> y(size_t(m * n), std::nanf("")), ref(size_t(m * n), std::nanf(""));
      t.matmul[int(DType::QBITS)](x.data(), m, WeightMatrix{DType::QBITS, n, k, &q}, y.data());
      const std::vector<float> eff = effective_weight(q);
      t.matmul[int(DType::F32)](x.data(), m, WeightMatrix{DType::F32, n, k, eff.data()}, ref.data());
      for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-4f * (1.0f + std::fabs(ref[i]))) << i;
    }
}

TEST(QuantMatmul, ActBits8QuantizesEachTokenToInt8) {
  const KernelTable& t = scalar_table();
  const int64_t n = 16, k = 128, m = 4;
  const std::vector<float> w = normal(size_t(n * k));
  MatrixOptions o;
  o.bits = 6;
  o.act_bits = 8;
  QuantizedWeight q = quantize_rtn(w.data(), n, k, o, nullptr);
  q.input_scale.assign(size_t(k), 1.0f);
  q.input_scale[3] = 4.0f;
  std::vector<float> x = normal(size_t(m * k));
  x[5] = 50.0f;  // one large value sets token 0's scale
  std::vector<float> y(size_t(m * n), std::nanf(""));
  t.matmul[int(DType::QBITS)](x.data(), m, WeightMatrix{DType::QBITS, n, k, &q}, y.data());
  // The documented reference: x * (1/s), per-token absmax/127, round half even, clamp.
  std::vector<float> xq(size_t(m * k));
  for (int64_t i = 0; i < m; ++i) {
    float amax = 0;
    for (int64_t c = 0; c < k; ++c) amax = std::fmax(amax, std::fabs(x[size_t(i * k + c)] * (1.0f / q.input_scale[size_t(c)])));
    for (int64_t c = 0; c < k; ++c) {
      const float v = x[size_t(i * k + c)] * (1.0f / q.input_scale[size_t(c)]);
      xq[size_t(i * k + c)] = std::fmin(127.f, std::fmax(-127.f, std::nearbyint(v * (127.0f / amax)))) * (amax / 127.0f);
    }
  }
  const std::vector<float> d = dequantize(q);
  std::vector<float> ref(size_t(m * n));
  t.matmul[int(DType::F32)](xq.data(), m, WeightMatrix{DType::F32, n, k, d.data()}, ref.data());
  for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-4f * (1.0f + std::fabs(ref[i])));
  // And it differs from fp32 activations (the quantization really happened).
  q.act_bits = 0;
  std::vector<float> yf(size_t(m * n));
  t.matmul[int(DType::QBITS)](x.data(), m, WeightMatrix{DType::QBITS, n, k, &q}, yf.data());
  double diff = 0;
  for (size_t i = 0; i < y.size(); ++i) diff += std::fabs(y[i] - yf[i]);
  EXPECT_GT(diff, 1e-3);
}

TEST(QuantAwq, ScalingLeavesTheFp32FunctionUnchanged) {
  const int64_t n = 32, k = 128, m = 6;
  const std::vector<float> w = normal(size_t(n * k)), x = correlated_inputs(m, k);
  std::vector<float> mean_abs(size_t(k), 0.0f);
  for (int64_t t = 0; t < m; ++t)
    for (int64_t c = 0; c < k; ++c) mean_abs[size_t(c)] += std::fabs(x[size_t(t * k + c)]) / float(m);
  for (float alpha : {0.0f, 0.3f, 0.5f, 1.0f}) {
    const std::vector<float> s = awq_scales(mean_abs, alpha);
    for (float v : s) ASSERT_TRUE(v > 0.0f && std::isfinite(v));
    if (alpha == 0.0f)
      for (float v : s) ASSERT_EQ(v, 1.0f);
    const std::vector<float> ws = scale_columns(w.data(), n, k, s);
    std::vector<float> xs(x.size());
    for (int64_t t = 0; t < m; ++t)
      for (int64_t c = 0; c < k; ++c) xs[size_t(t * k + c)] = x[size_t(t * k + c)] / s[size_t(c)];
    std::vector<float> y0(size_t(m * n)), y1(size_t(m * n));
    matmul(x.data(), m, WeightMatrix{DType::F32, n, k, w.data()}, y0.data());
    matmul(xs.data(), m, WeightMatrix{DType::F32, n, k, ws.data()}, y1.data());
    for (size_t i = 0; i < y0.size(); ++i) ASSERT_NEAR(y0[i], y1[i], 1e-4f * (1.0f + std::fabs(y0[i])));
  }
}

TEST(QuantAwq, SearchIsNeverWorseThanPlainRoundingOnItsObjective) {
  const int64_t n = 48, k = 256, m = 512;
  const std::vector<float> w = normal(size_t(n * k), 0.02f), x = correlated_inputs(m, k);
  const std::vector<float> h = hessian_of(x, m, k);
  std::vector<float> mean_abs(size_t(k), 0.0f), sm(static_cast<size_t>(k));
  for (int64_t t = 0; t < m; ++t)
    for (int64_t c = 0; c < k; ++c) mean_abs[size_t(c)] += std::fabs(x[size_t(t * k + c)]) / float(m);
  for (int64_t c = 0; c < k; ++c) sm[size_t(c)] = h[size_t(c * k + c)];
  for (int bits : {3, 4}) {
    MatrixOptions o;
    o.bits = bits;
    auto inner = [&](const std::vector<float>& ws, const float* cw, const float*) { return quantize_rtn(ws.data(), n, k, o, cw); };
    const AwqResult a = search_awq(w.data(), n, k, mean_abs, sm, h.data(), AwqOptions{}, inner);
    const QuantizedWeight plain = quantize_rtn(w.data(), n, k, o, sm.data());
    const double e_plain = output_error(w.data(), plain, h.data());
    EXPECT_LE(a.error, e_plain * (1 + 1e-9));
    EXPECT_NEAR(a.error, output_error(w.data(), a.q, h.data()), 1e-6 * a.error);
    EXPECT_EQ(a.q.input_scale.empty(), a.alpha == 0.0f);
  }
}

TEST(QuantGptq, BeatsRoundingOnCorrelatedInputs) {
  const int64_t n = 64, k = 256, m = 1024;
  const std::vector<float> w = normal(size_t(n * k), 0.02f), x = correlated_inputs(m, k);
  const std::vector<float> h = hessian_of(x, m, k);
  std::vector<float> sm(static_cast<size_t>(k));
  for (int64_t c = 0; c < k; ++c) sm[size_t(c)] = h[size_t(c * k + c)];
  for (int bits : {2, 3, 4})
    for (bool act_order : {false, true}) {
      MatrixOptions o;
      o.bits = bits;
      o.group = 64;
      GptqOptions g;
      g.act_order = act_order;
      const QuantizedWeight qg = quantize_gptq(w.data(), n, k, o, h.data(), g);
      const QuantizedWeight qr = quantize_rtn(w.data(), n, k, o, sm.data());
      const double eg = output_error(w.data(), qg, h.data()), er = output_error(w.data(), qr, h.data());
      EXPECT_LT(eg, 0.9 * er) << "bits " << bits << " act_order " << act_order;
      for (float s : qg.scales) ASSERT_EQ(s, round_meta(s, DType::F16));
    }
}

TEST(QuantAlloc, MeetsTheTargetAndIsOptimal) {
  for (int trial = 0; trial < 30; ++trial) {
    const int nitems = 3 + trial % 3, lo = 2, hi = std::min(8, 4 + trial % 4);
    std::vector<AllocItem> items(static_cast<size_t>(nitems));
    std::uniform_int_distribution<int> sz(1, 8);
    std::uniform_real_distribution<double> g(0.1, 10.0);
    for (auto& it : items) {
      it.numel = int64_t(sz(rng())) * 128 * 64;
      const double gain = g(rng());
      for (int b = lo; b <= hi; ++b) it.cost.push_back(gain * std::pow(4.0, -b) * double(it.numel));
    }
    std::uniform_real_distribution<double> tg(width_bpw(lo, 64, false), width_bpw(hi, 64, false));
    const double target = tg(rng());
    const AllocResult r = allocate_bits(items, lo, hi, 64, false, target);
    ASSERT_LE(r.bpw, target + 1e-12);
    // Brute force over every assignment.
    double best = 1e300;
    const int nw = hi - lo + 1;
    int64_t combos = 1;
    for (int i = 0; i < nitems; ++i) combos *= nw;
    int64_t total = 0;
    for (const auto& it : items) total += it.numel;
    for (int64_t c = 0; c < combos; ++c) {
      int64_t x = c;
      double bits = 0, cost = 0;
      for (int i = 0; i < nitems; ++i, x /= nw) {
        const int b = lo + int(x % nw);
        bits += double(items[size_t(i)].numel) * width_bpw(b, 64, false);
        cost += items[size_t(i)].cost[size_t(b - lo)];
      }
      if (bits / double(total) <= target + 1e-12) best = std::min(best, cost);
    }
    EXPECT_NEAR(r.cost, best, 1e-9 * best) << "trial " << trial;
  }
  std::vector<AllocItem> one(1);
  one[0].numel = 128 * 128;
  one[0].cost = {3, 2, 1};
  EXPECT_THROW(allocate_bits(one, 2, 4, 128, false, 2.0), Error);
  const AllocResult exact = allocate_bits(one, 2, 4, 128, false, width_bpw(3, 128, false));
  EXPECT_EQ(exact.bits[0], 3);
  EXPECT_DOUBLE_EQ(exact.bpw, width_bpw(3, 128, false));
}
