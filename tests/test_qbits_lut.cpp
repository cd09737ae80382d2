// Table-lookup (T-MAC style) kernels for 2..4-bit weights against their bit-exact scalar
// reference, and that reference against the fp32 format within the table-quantization
// bound. Fresh random data each run (seed printed; replay with ANYBIT_TEST_SEED).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/dispatch.h"
#include "kernels/qbits_kernels.h"
#include "kernels/qbits_lut.h"
#include "test_qbits_util.h"

namespace anybit {
namespace {

using test::QSpec;

std::vector<const qbits::Kernel*> lut_kernels() {
  std::vector<const qbits::Kernel*> v;
  for (const auto& k : qbits::available_kernels())
    if (k.family == qbits::Family::Lut) v.push_back(&k);
  return v;
}

std::vector<float> random_x(std::mt19937_64& rng, int64_t n) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = nd(rng);
  for (int i = 0; i < 3 && n > 0; ++i) x[size_t(rng() % uint64_t(n))] *= 20.0f;
  return x;
}

void check_lut(const qbits::Kernel& k, const QSpec& s, int64_t m, std::mt19937_64& rng) {
  SCOPED_TRACE(fmt::format("{} bits={} group={} asym={} input_scale={} f32_meta={} rows={} cols={} m={}", k.name,
                           s.bits, s.group, s.asym, s.input_scale, s.f32_meta, s.rows, s.cols, m));
  QuantizedWeight w = test::random_qweight(s, rng);
  const std::vector<float> x = random_x(rng, m * s.cols);
  constexpr int64_t kGuard = 21;
  std::vector<float> y(size_t(m * s.rows + kGuard), std::numeric_limits<float>::quiet_NaN());
  for (int64_t i = 0; i < kGuard; ++i) y[size_t(m * s.rows + i)] = -555.0f;
  k.run(w, x.data(), m, y.data());
  std::vector<float> ref(size_t(m * s.rows));
  qbits::matmul_lut_ref(w, x.data(), m, ref.data());
  const std::vector<double> exact = test::dequant_ref(w, x.data(), m);
  const std::vector<double> tol = test::lut_bound(w, x.data(), m);
  int bad = 0;
  for (size_t i = 0; i < ref.size() && bad < 5; ++i) {
    if (std::memcmp(&y[i], &ref[i], 4) != 0) {
      ADD_FAILURE() << "y[" << i / size_t(s.rows) << "," << i % size_t(s.rows) << "] = " << y[i] << ", reference "
                    << ref[i];
      ++bad;
    }
    if (!(std::fabs(double(ref[i]) - exact[i]) <= tol[i])) {
      ADD_FAILURE() << "reference y[" << i << "] = " << ref[i] << " vs fp32 " << exact[i] << " beyond bound " << tol[i];
      ++bad;
    }
  }
  for (int64_t i = 0; i < kGuard; ++i) ASSERT_EQ(y[size_t(m * s.rows + i)], -555.0f) << "wrote past y";
}

TEST(QbitsLut, KernelsMatchReference) {
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed) + " (replay with ANYBIT_TEST_SEED)");
  std::mt19937_64 rng(seed);
  const auto ks = lut_kernels();
  if (ks.empty()) GTEST_SKIP() << "no table-lookup kernel on this CPU";
  for (const auto* k : ks)
    for (int bits = 2; bits <= 4; ++bits)
      for (int group : {32, 64, 128})
        for (bool asym : {false, true})
          for (int64_t m : {1, 2, 3, 8, 17, 64}) {
            QSpec s;
            s.bits = bits, s.group = group, s.asym = asym;
            s.rows = 1 + int64_t(rng() % (m >= 17 ? 50 : 100));
            s.cols = group * (1 + int64_t(rng() % (group == 32 ? 8 : 4)));
            s.input_scale = rng() % 4 == 0;
            s.f32_meta = rng() % 5 == 0;
            check_lut(*k, s, m, rng);
            if (HasFatalFailure()) return;
          }
}

TEST(QbitsLut, LayerShapes) {
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (const auto* k : lut_kernels())
    for (int bits : {2, 3, 4}) {
      QSpec s;
      s.bits = bits, s.group = 128, s.rows = 333, s.cols = 2048;
      check_lut(*k, s, 1, rng);
      if (HasFatalFailure()) return;
    }
}

TEST(QbitsLut, RefusesA8AndWideCodes) {
  std::mt19937_64 rng(3);
  for (const auto* k : lut_kernels()) {
    QSpec s;
    s.act_bits = 8;
    QuantizedWeight w = test::random_qweight(s, rng);
    std::vector<float> x(size_t(s.cols)), y(size_t(s.rows));
    EXPECT_THROW(k->run(w, x.data(), 1, y.data()), Error);
    s.act_bits = 0, s.bits = 5;
    QuantizedWeight w5 = test::random_qweight(s, rng);
    EXPECT_THROW(k->run(w5, x.data(), 1, y.data()), Error);
  }
}

}  // namespace
}  // namespace anybit
