// Any-bit quantization primitives: bit packing, group quantization error bounds,
// clipping search, the scalar QBITS matmul, AWQ scaling, GPTQ, the bpw allocator, the
// group-parameter refinement, coordinate descent on the codes.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/error.h"
#include "kernels/dispatch.h"
#include "quant/awq.h"
#include "quant/bitpack.h"
#include "quant/bpw_alloc.h"
#include "quant/coordinate_descent.h"
#include "quant/gptq.h"
#include "quant/group_quant.h"
#include "quant/objective.h"
#include "quant/refine.h"

#include "test_util.h"

using namespace anybit;
using namespace anybit::quant;

namespace {

using test::normal;
using test::rng;

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

namespace {

// Unpacked codes (rows x cols) and per-group params of a quantized weight.
void unpack(const QuantizedWeight& q, std::vector<uint8_t>& codes, std::vector<GroupParams>& params) {
  codes.resize(size_t(q.rows * q.cols));
  params.resize(size_t(q.rows * q.groups_per_row()));
  for (int64_t r = 0; r < q.rows; ++r) {
    for (int64_t c = 0; c < q.cols; ++c) codes[size_t(r * q.cols + c)] = uint8_t(q.code(r, c));
    for (int64_t g = 0; g < q.groups_per_row(); ++g)
      params[size_t(r * q.groups_per_row() + g)] = {q.scales[size_t(r * q.groups_per_row() + g)], q.zero(r, g)};
  }
}

double sum(const std::vector<double>& v) {
  double s = 0.0;
  for (double x : v) s += x;
  return s;
}

// Round-to-nearest grids per group of `group` columns (scales multiplied by `stretch` and
// rounded to f16 when stretch != 1) and each weight's nearest code on its grid.
void nearest_codes(const std::vector<float>& w, int64_t n, int64_t k, int64_t group, const GroupFormat& f, float stretch,
                   std::vector<GroupParams>& p, std::vector<uint8_t>& codes) {
  const int64_t G = k / group;
  p.assign(size_t(n * G), GroupParams{});
  codes.assign(size_t(n * k), 0);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t g = 0; g < G; ++g) {
      const float* wg = w.data() + r * k + g * group;
      GroupParams gp = rtn_params(wg, group, f);
      if (stretch != 1.0f) gp.scale = round_meta(gp.scale * stretch, DType::F16);
      p[size_t(r * G + g)] = gp;
      encode_group(wg, group, f, gp, codes.data() + r * k + g * group);
    }
}

}  // namespace

TEST(QuantRefine, RefitReachesTheRowOptimumAndNeverIncreasesTheError) {
  const int64_t n = 24, k = 256, m = 1024, group = 64, G = k / group;
  const std::vector<float> w = normal(size_t(n * k), 0.02f), x = correlated_inputs(m, k);
  const std::vector<float> h = hessian_of(x, m, k);
  for (int bits : {2, 3, 4})
    for (bool asym : {false, true})
      for (DType meta : {DType::F32, DType::F16}) {
        const GroupFormat f{bits, asym, meta};
        // Round-to-nearest codes stored with stretched scales: the scales that fit those
        // codes best are far from the stored ones, so the refit must find better ones.
        std::vector<GroupParams> p(size_t(n * G));
        std::vector<uint8_t> codes(size_t(n * k));
        for (int64_t r = 0; r < n; ++r)
          for (int64_t g = 0; g < G; ++g) {
            GroupParams gp = rtn_params(w.data() + r * k + g * group, group, f);
            encode_group(w.data() + r * k + g * group, group, f, gp, codes.data() + r * k + g * group);
            gp.scale = round_meta(gp.scale * 1.3f, meta);
            p[size_t(r * G + g)] = gp;
          }
        const std::vector<double> before = row_output_errors(w.data(), dequantize_codes(codes.data(), p, n, k, group).data(), n, k, h.data());
        std::vector<GroupParams> p2 = p;
        const int64_t changed = refit_group_params(w.data(), n, k, group, f, h.data(), codes.data(), p2);
        const std::vector<double> after = row_output_errors(w.data(), dequantize_codes(codes.data(), p2, n, k, group).data(), n, k, h.data());
        const std::string what = "bits " + std::to_string(bits) + (asym ? " asym" : " sym") + (meta == DType::F16 ? " f16" : " f32");
        EXPECT_EQ(changed, n) << what;
        for (int64_t r = 0; r < n; ++r) EXPECT_LE(after[size_t(r)], before[size_t(r)] * (1 + 1e-6)) << what << " row " << r;
        EXPECT_LT(sum(after), 0.9 * sum(before)) << what;
        for (const auto& gp : p2) {
          ASSERT_EQ(gp.scale, round_meta(gp.scale, meta));
          ASSERT_EQ(gp.zero, round_meta(gp.zero, meta));
          if (!asym) ASSERT_EQ(gp.zero, f.sym_zero());
        }
        if (meta != DType::F32) continue;
        // Unrounded, the refit is the least-squares optimum: no single scale (or zero)
        // nudge lowers the row's error.
        for (int64_t g = 0; g < G; ++g)
          for (int which = 0; which < (asym ? 2 : 1); ++which)
            for (float step : {-1e-2f, 1e-2f}) {
              std::vector<GroupParams> pp = p2;
              GroupParams& gp = pp[size_t(g)];  // row 0
              if (which == 0) gp.scale *= 1.0f + step;
              else gp.zero += step * float(f.qmax());
              const double e = row_output_errors(w.data(), dequantize_codes(codes.data(), pp, 1, k, group).data(), 1, k, h.data())[0];
              EXPECT_GE(e, after[0] * (1 - 1e-6)) << what << " group " << g << " param " << which << " step " << step;
            }
      }
}

TEST(QuantRefine, GptqRefinementNeverWorsensARowAndHelpsAtLowWidth) {
  const int64_t n = 48, k = 256, m = 1024;
  const std::vector<float> w = normal(size_t(n * k), 0.02f), x = correlated_inputs(m, k);
  const std::vector<float> h = hessian_of(x, m, k);
  for (int bits : {2, 3, 4})
    for (bool asym : {false, true})
      for (bool act_order : {false, true}) {
        MatrixOptions o;
        o.bits = bits;
        o.group = 64;
        o.asym = asym;
        GptqOptions g;
        g.act_order = act_order;
        const QuantizedWeight plain = quantize_gptq(w.data(), n, k, o, h.data(), g);
        g.refine = 3;
        const QuantizedWeight refined = quantize_gptq(w.data(), n, k, o, h.data(), g);
        const std::vector<double> e0 = row_output_errors(w.data(), dequantize(plain).data(), n, k, h.data());
        const std::vector<double> e1 = row_output_errors(w.data(), dequantize(refined).data(), n, k, h.data());
        const std::string what = "bits " + std::to_string(bits) + (asym ? " asym" : " sym") + (act_order ? " act_order" : "");
        for (int64_t r = 0; r < n; ++r) EXPECT_LE(e1[size_t(r)], e0[size_t(r)] * (1 + 1e-6)) << what << " row " << r;
        EXPECT_LT(sum(e1), 0.995 * sum(e0)) << what;
        EXPECT_NEAR(sum(e1), output_error(w.data(), refined, h.data()), 1e-4 * sum(e1)) << what;
        for (float s : refined.scales) ASSERT_EQ(s, round_meta(s, DType::F16));
        for (float z : refined.zeros) ASSERT_EQ(z, round_meta(z, DType::F16));
      }
}

TEST(QuantReferenceTarget, QuantizingTheTargetMatchesTheReferenceOutputsBetter) {
  // x: the inputs a layer sees in the quantized model; r: the reference model's inputs on
  // the same tokens, x plus a perturbation correlated with x (upstream quantization error).
  const int64_t n = 32, k = 128, m = 4096;
  const std::vector<float> w = normal(size_t(n * k), 0.05f), x = correlated_inputs(m, k);
  const std::vector<float> mix = normal(size_t(k * k), 0.3f / std::sqrt(float(k))), noise = normal(size_t(m * k), 0.05f);
  std::vector<float> r(x.size());
  for (int64_t t = 0; t < m; ++t)
    for (int64_t c = 0; c < k; ++c) {
      double s = x[size_t(t * k + c)] + noise[size_t(t * k + c)];
      for (int64_t j = 0; j < k; ++j) s += double(x[size_t(t * k + j)]) * mix[size_t(j * k + c)];
      r[size_t(t * k + c)] = float(s);
    }
  const std::vector<float> h = hessian_of(x, m, k);
  std::vector<float> cross(size_t(k * k), 0.0f);  // E[r x^T]
  for (int64_t t = 0; t < m; ++t)
    for (int64_t a = 0; a < k; ++a)
      for (int64_t b = 0; b < k; ++b) cross[size_t(a * k + b)] += r[size_t(t * k + a)] * x[size_t(t * k + b)] / float(m);
  // Identical inputs: no correction.
  for (float v : reference_target_operator(h, h, k, 0.01)) ASSERT_EQ(v, 0.0f);

  const std::vector<float> wt = apply_target_operator(w.data(), n, k, reference_target_operator(h, cross, k, 1e-6));
  // E||W r - V x||^2 over the calibration tokens.
  auto mismatch = [&](const std::vector<float>& v) {
    double e = 0.0;
    for (int64_t t = 0; t < m; ++t)
      for (int64_t o = 0; o < n; ++o) {
        double a = 0.0, b = 0.0;
        for (int64_t c = 0; c < k; ++c) {
          a += double(w[size_t(o * k + c)]) * r[size_t(t * k + c)];
          b += double(v[size_t(o * k + c)]) * x[size_t(t * k + c)];
        }
        e += (a - b) * (a - b);
      }
    return e / double(m);
  };
  // W_t is the least-squares optimum (nearly: a tiny ridge), far better than W itself.
  EXPECT_LT(mismatch(wt), 0.5 * mismatch(w));
  std::vector<float> nudged = wt;
  for (size_t i = 0; i < nudged.size(); i += 7) nudged[i] += 1e-3f;
  EXPECT_LT(mismatch(wt), mismatch(nudged));
  MatrixOptions o;
  o.bits = 4;
  o.group = 64;
  const GptqOptions g;
  const QuantizedWeight qw = quantize_gptq(w.data(), n, k, o, h.data(), g);
  const QuantizedWeight qt = quantize_gptq(wt.data(), n, k, o, h.data(), g);
  EXPECT_LT(mismatch(dequantize(qt)), 0.8 * mismatch(dequantize(qw)));
}

TEST(QuantAlloc, FormatsWithGroupsAndZerosMeetTheTargetAndAreOptimal) {
  // Widths x groups x symmetry: sizes no longer grow with the width alone, so a finer or
  // zero-pointed group can be worth more than a bit.
  std::vector<AllocOption> opts;
  for (int b : {2, 3, 4})
    for (int g : {32, 128})
      for (bool a : {false, true}) opts.push_back({b, g, a});
  const int nw = int(opts.size());
  for (int trial = 0; trial < 20; ++trial) {
    const int nitems = 2 + trial % 3;
    std::vector<AllocItem> items(static_cast<size_t>(nitems));
    std::uniform_int_distribution<int> sz(1, 6);
    std::uniform_real_distribution<double> g(0.1, 10.0), noise(0.5, 1.5);
    for (auto& it : items) {
      it.numel = int64_t(sz(rng())) * 128 * 32;
      const double gain = g(rng());
      for (const auto& f : opts) it.cost.push_back(gain * noise(rng()) * std::pow(4.0, -f.bits) * double(it.numel));
    }
    std::uniform_real_distribution<double> tg(width_bpw(2, 128, false), width_bpw(4, 32, true));
    const double target = tg(rng());
    const AllocResult r = allocate_formats(items, opts, target);
    ASSERT_LE(r.bpw, target + 1e-12);
    double best = 1e300;
    int64_t combos = 1, total = 0;
    for (int i = 0; i < nitems; ++i) combos *= nw;
    for (const auto& it : items) total += it.numel;
    for (int64_t c = 0; c < combos; ++c) {
      int64_t x = c;
      double bits = 0, cost = 0;
      for (int i = 0; i < nitems; ++i, x /= nw) {
        const AllocOption& f = opts[size_t(x % nw)];
        bits += double(items[size_t(i)].numel) * width_bpw(f.bits, f.group, f.asym);
        cost += items[size_t(i)].cost[size_t(x % nw)];
      }
      if (bits / double(total) <= target + 1e-12) best = std::min(best, cost);
    }
    EXPECT_NEAR(r.cost, best, 1e-9 * best) << "trial " << trial;
    for (size_t i = 0; i < items.size(); ++i) EXPECT_EQ(r.bits[i], opts[size_t(r.choice[i])].bits);
  }
}

TEST(QuantAlloc, ItemsTakeOnlyTheFormatsTheyAllowAndStayOptimal) {
  // A matrix whose rows are not whole groups of 128 may take only the 32-groups: random
  // allowed sets per item, checked against the brute-force optimum over allowed choices.
  std::vector<AllocOption> opts;
  for (int b : {2, 3, 4, 6})
    for (int g : {32, 128}) opts.push_back({b, g, g == 32});
  const int nw = int(opts.size());
  for (int trial = 0; trial < 20; ++trial) {
    const int nitems = 2 + trial % 3;
    std::vector<AllocItem> items(static_cast<size_t>(nitems));
    std::uniform_int_distribution<int> sz(1, 6), coin(0, 2);
    std::uniform_real_distribution<double> g(0.1, 10.0), noise(0.5, 1.5);
    double lo = 0, hi = 0;
    int64_t total = 0;
    for (auto& it : items) {
      it.numel = int64_t(sz(rng())) * 128 * 32;
      const double gain = g(rng());
      for (const auto& f : opts) it.cost.push_back(gain * noise(rng()) * std::pow(4.0, -f.bits) * double(it.numel));
      it.allowed.assign(size_t(nw), 0);
      while (std::count(it.allowed.begin(), it.allowed.end(), 1) == 0)
        for (auto& a : it.allowed) a = coin(rng()) == 0;
      double mn = 1e300, mx = 0;
      for (int b = 0; b < nw; ++b)
        if (it.allowed[size_t(b)]) {
          const double bits = double(it.numel) * width_bpw(opts[size_t(b)].bits, opts[size_t(b)].group, opts[size_t(b)].asym);
          mn = std::min(mn, bits), mx = std::max(mx, bits);
        }
      lo += mn, hi += mx, total += it.numel;
    }
    std::uniform_real_distribution<double> tg(lo / double(total), hi / double(total) + 1e-9);
    const double target = tg(rng());
    const AllocResult r = allocate_formats(items, opts, target);
    ASSERT_LE(r.bpw, target + 1e-12);
    for (size_t i = 0; i < items.size(); ++i) EXPECT_TRUE(items[i].allowed[size_t(r.choice[i])]) << "trial " << trial << " item " << i;
    double best = 1e300;
    int64_t combos = 1;
    for (int i = 0; i < nitems; ++i) combos *= nw;
    for (int64_t c = 0; c < combos; ++c) {
      int64_t x = c;
      double bits = 0, cost = 0;
      bool ok = true;
      for (int i = 0; i < nitems; ++i, x /= nw) {
        const AllocOption& f = opts[size_t(x % nw)];
        ok = ok && items[size_t(i)].allowed[size_t(x % nw)];
        bits += double(items[size_t(i)].numel) * width_bpw(f.bits, f.group, f.asym);
        cost += items[size_t(i)].cost[size_t(x % nw)];
      }
      if (ok && bits / double(total) <= target + 1e-12) best = std::min(best, cost);
    }
    EXPECT_NEAR(r.cost, best, 1e-9 * best) << "trial " << trial;
  }
  // An item that allows nothing, or a mask of the wrong length, is an error, not a choice.
  std::vector<AllocItem> bad(1);
  bad[0].numel = 128 * 32;
  bad[0].cost.assign(size_t(nw), 1.0);
  bad[0].allowed.assign(size_t(nw), 0);
  EXPECT_THROW(allocate_formats(bad, opts, 8.0), Error);
  bad[0].allowed.assign(size_t(nw) - 1, 1);
  EXPECT_THROW(allocate_formats(bad, opts, 8.0), Error);
}

TEST(QuantCoordinateDescent, SweepsNeverRaiseARowsErrorAndEndAtACoordinateMinimum) {
  const int64_t n = 16, k = 256, m = 1024, group = 64, G = k / group;
  const std::vector<float> w = normal(size_t(n * k), 0.02f), x = correlated_inputs(m, k);
  const std::vector<float> h = hessian_of(x, m, k);
  for (int bits : {2, 3, 4})
    for (bool asym : {false, true}) {
      const GroupFormat f{bits, asym, DType::F16};
      const std::string what = "bits " + std::to_string(bits) + (asym ? " asym" : " sym");
      // Round-to-nearest codes: each column rounded on its own, far from the joint optimum.
      std::vector<GroupParams> p;
      std::vector<uint8_t> codes;
      nearest_codes(w, n, k, group, f, 1.0f, p, codes);
      auto errors = [&] { return row_output_errors(w.data(), dequantize_codes(codes.data(), p, n, k, group).data(), n, k, h.data()); };
      const std::vector<double> start = errors();
      std::vector<double> prev = start;
      int64_t moved = 1;
      int sweeps = 0;
      for (; moved > 0 && sweeps < 50; ++sweeps) {
        moved = cd_sweeps(w.data(), n, k, group, f, h.data(), p, codes.data(), 1);
        const std::vector<double> e = errors();
        for (int64_t r = 0; r < n; ++r) ASSERT_LE(e[size_t(r)], prev[size_t(r)] * (1 + 1e-9) + 1e-12) << what << " row " << r;
        prev = e;
      }
      EXPECT_EQ(moved, 0) << what << ": not converged after " << sweeps << " sweeps";
      EXPECT_LT(sum(prev), 0.7 * sum(start)) << what;
      // Converged: no single code moved by one level lowers its row's error, and every code
      // is a level of the grid.
      for (int64_t r = 0; r < 4; ++r)
        for (int64_t c = 0; c < k; ++c) {
          ASSERT_LE(int(codes[size_t(r * k + c)]), f.qmax());
          for (int step : {-1, 1}) {
            const int q = int(codes[size_t(r * k + c)]) + step;
            if (q < 0 || q > f.qmax()) continue;
            std::vector<uint8_t> row(codes.begin() + r * k, codes.begin() + (r + 1) * k);
            row[size_t(c)] = uint8_t(q);
            const std::vector<GroupParams> pr(p.begin() + r * G, p.begin() + (r + 1) * G);
            const double e = row_output_errors(w.data() + r * k, dequantize_codes(row.data(), pr, 1, k, group).data(), 1, k, h.data())[0];
            EXPECT_GE(e, prev[size_t(r)] * (1 - 1e-6)) << what << " row " << r << " col " << c << " step " << step;
          }
        }
    }
}

TEST(QuantCoordinateDescent, BeatsOrMatchesGptqOnEveryRow) {
  const int64_t n = 48, k = 256, m = 1024;
  const std::vector<float> w = normal(size_t(n * k), 0.02f), x = correlated_inputs(m, k);
  const std::vector<float> h = hessian_of(x, m, k);
  for (int bits : {2, 3, 4})
    for (bool asym : {false, true}) {
      MatrixOptions o;
      o.bits = bits;
      o.group = 64;
      o.asym = asym;
      GptqOptions g;
      g.refine = 3;
      const QuantizedWeight gptq = quantize_gptq(w.data(), n, k, o, h.data(), g);
      g.cd_passes = 4;
      const QuantizedWeight cd = quantize_gptq(w.data(), n, k, o, h.data(), g);
      const std::vector<double> e0 = row_output_errors(w.data(), dequantize(gptq).data(), n, k, h.data());
      const std::vector<double> e1 = row_output_errors(w.data(), dequantize(cd).data(), n, k, h.data());
      const std::string what = "bits " + std::to_string(bits) + (asym ? " asym" : " sym");
      for (int64_t r = 0; r < n; ++r) EXPECT_LE(e1[size_t(r)], e0[size_t(r)] * (1 + 1e-6)) << what << " row " << r;
      // Better on symmetric grids: over 24 fresh draws the sum fell by 1.1-5.7% (worst case
      // 4 bits; one CI draw gained only 0.98%, so the bar is 0.5%). With zero points, GPTQ plus
      // the refit leaves 0-1% to gain on these synthetic inputs (on tiny-llama's layers 5-12%).
      if (asym) EXPECT_LE(sum(e1), sum(e0) * (1 + 1e-6)) << what;
      else EXPECT_LT(sum(e1), 0.995 * sum(e0)) << what;
      for (float s : cd.scales) ASSERT_EQ(s, round_meta(s, DType::F16));
      for (float z : cd.zeros) ASSERT_EQ(z, round_meta(z, DType::F16));
    }
}

TEST(QuantCoordinateDescent, GroupSearchNeverRaisesARowsErrorAndEscapesBadGrids) {
  const int64_t n = 16, k = 256, m = 1024, group = 64;
  const std::vector<float> w = normal(size_t(n * k), 0.02f), x = correlated_inputs(m, k);
  const std::vector<float> h = hessian_of(x, m, k);
  for (int bits : {2, 3})
    for (bool asym : {false, true}) {
      const GroupFormat f{bits, asym, DType::F16};
      const std::string what = "bits " + std::to_string(bits) + (asym ? " asym" : " sym");
      // Grids stretched 1.6x, codes nearest on them, then converged sweeps and refits: a local
      // minimum of the sweeps and the refit.
      std::vector<GroupParams> p;
      std::vector<uint8_t> codes;
      nearest_codes(w, n, k, group, f, 1.6f, p, codes);
      cd_refine(w.data(), n, k, group, f, h.data(), p, codes.data(), 20);
      auto errors = [&] { return row_output_errors(w.data(), dequantize_codes(codes.data(), p, n, k, group).data(), n, k, h.data()); };
      const std::vector<double> before = errors();
      const int64_t changed = cd_group_search(w.data(), n, k, group, f, h.data(), p, codes.data(), 10);
      const std::vector<double> after = errors();
      for (int64_t r = 0; r < n; ++r) EXPECT_LE(after[size_t(r)], before[size_t(r)] * (1 + 1e-9)) << what << " row " << r;
      EXPECT_GT(changed, 0) << what;
      EXPECT_LT(sum(after), 0.99 * sum(before)) << what;
      for (int64_t i = 0; i < n * k; ++i) ASSERT_LE(int(codes[size_t(i)]), f.qmax());
      for (const auto& gp : p) {
        ASSERT_EQ(gp.scale, round_meta(gp.scale, DType::F16));
        ASSERT_EQ(gp.zero, round_meta(gp.zero, DType::F16));
      }
    }
}
