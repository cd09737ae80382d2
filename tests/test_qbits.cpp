// Any-bit (QBITS) integer kernels against their scalar references: every bit width 2..8,
// group 32/64/128, symmetric/asymmetric, act_bits 0/8, optional input_scale, m in
// {1,2,3,8,17,64}, random shapes (rows not a multiple of the 16-row tile), fresh random
// data each run (seed printed; replay with ANYBIT_TEST_SEED), outputs poisoned first.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "kernels/dispatch.h"
#include "kernels/qbits.h"
#include "kernels/qbits_kernels.h"
#include "kernels/qbits_pack.h"
#include "kernels/qbits_prepare.h"
#include "test_qbits_util.h"

namespace anybit {
namespace {

using test::QSpec;

struct Int8Kernel {
  const char* name;
  void (*fn)(const QuantizedWeight&, const float*, int64_t, float*);
  void (*quant)(const float*, int64_t, int64_t, int, bool, const float*, qbits::ActQ&);
};

std::vector<Int8Kernel> int8_kernels() {
  std::vector<Int8Kernel> v;
  if (kernels_for(Isa::Avx512)) v.push_back({"avx512", avx512::qbits_int8_matmul, avx512::qbits_quantize_acts});
  if (kernels_for(Isa::Avx2)) v.push_back({"avx2", avx2::qbits_int8_matmul, avx2::qbits_quantize_acts});
  return v;
}

std::vector<float> random_x(std::mt19937_64& rng, int64_t n) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = nd(rng);
  // A few outliers, as in real activations.
  for (int i = 0; i < 3 && n > 0; ++i) x[size_t(rng() % uint64_t(n))] *= 20.0f;
  return x;
}

std::string describe(const QSpec& s, int64_t m) {
  return fmt::format("bits={} group={} asym={} act_bits={} input_scale={} f32_meta={} rows={} cols={} m={}", s.bits,
                     s.group, s.asym, s.act_bits, s.input_scale, s.f32_meta, s.rows, s.cols, m);
}

// Runs `fn` on a fresh weight into a NaN-poisoned output with guard cells; checks it
// equals the exact integer reference bit for bit and the fp32 format reference within the
// int8-activation bound.
void check_int8(const Int8Kernel& k, const QSpec& s, int64_t m, std::mt19937_64& rng) {
  SCOPED_TRACE(std::string(k.name) + " " + describe(s, m));
  QuantizedWeight w = test::random_qweight(s, rng);
  const std::vector<float> x = random_x(rng, m * s.cols);
  constexpr int64_t kGuard = 19;
  std::vector<float> y(size_t(m * s.rows + kGuard), std::numeric_limits<float>::quiet_NaN());
  for (int64_t i = 0; i < kGuard; ++i) y[size_t(m * s.rows + i)] = -777.0f;
  k.fn(w, x.data(), m, y.data());
  std::vector<float> ref(size_t(m * s.rows));
  qbits::matmul_int8_ref(w, x.data(), m, ref.data());
  const std::vector<double> exact = test::dequant_ref(w, x.data(), m);
  const std::vector<double> tol = test::int8_act_bound(w, x.data(), m);
  int bad = 0;
  for (size_t i = 0; i < ref.size() && bad < 5; ++i) {
    if (std::memcmp(&y[i], &ref[i], 4) != 0) {
      ADD_FAILURE() << "y[" << i / size_t(s.rows) << "," << i % size_t(s.rows) << "] = " << y[i]
                    << ", integer reference " << ref[i];
      ++bad;
    }
    if (!(std::fabs(double(ref[i]) - exact[i]) <= tol[i])) {
      ADD_FAILURE() << "reference y[" << i << "] = " << ref[i] << " vs fp32 " << exact[i] << " beyond bound "
                    << tol[i];
      ++bad;
    }
  }
  for (int64_t i = 0; i < kGuard; ++i) ASSERT_EQ(y[size_t(m * s.rows + i)], -777.0f) << "wrote past y";
}

TEST(Qbits, ActivationQuantizationSimdMatchesScalar) {
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (const auto& k : int8_kernels())
    for (int group : {32, 64, 128})
      for (bool per_token : {false, true})
        for (bool scaled : {false, true}) {
          const int64_t m = 1 + int64_t(rng() % 5), cols = group * (1 + int64_t(rng() % 9));
          std::vector<float> x = random_x(rng, m * cols), is(static_cast<size_t>(cols));
          for (auto& v : is) v = 0.5f + float(rng() % 1000) / 300.0f;
          if (cols >= 64) std::fill(x.begin(), x.begin() + 32, 0.0f);  // an all-zero group
          const int64_t G = cols / group;
          std::vector<int8_t> q1(size_t(m * cols)), q2(size_t(m * cols) + 64);
          std::vector<float> a1(size_t(m * G)), b1(size_t(m * G)), a2(size_t(m * G)), b2(size_t(m * G));
          qbits::ActQ r1{m, cols, G, q1.data(), a1.data(), b1.data()};
          qbits::ActQ r2{m, cols, G, q2.data(), a2.data(), b2.data()};
          qbits::quantize_acts_scalar(x.data(), m, cols, group, per_token, scaled ? is.data() : nullptr, r1);
          k.quant(x.data(), m, cols, group, per_token, scaled ? is.data() : nullptr, r2);
          ASSERT_EQ(0, std::memcmp(q1.data(), q2.data(), q1.size())) << k.name << " group " << group;
          ASSERT_EQ(0, std::memcmp(a1.data(), a2.data(), a1.size() * 4));
          ASSERT_EQ(0, std::memcmp(b1.data(), b2.data(), b1.size() * 4));
        }
}

TEST(Qbits, Int8KernelsMatchReferenceEveryWidth) {
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed) + " (replay with ANYBIT_TEST_SEED)");
  std::mt19937_64 rng(seed);
  const auto ks = int8_kernels();
  if (ks.empty()) GTEST_SKIP() << "no SIMD ISA on this CPU";
  for (const auto& k : ks)
    for (int bits = 2; bits <= 8; ++bits)
      for (int group : {32, 64, 128})
        for (bool asym : {false, true})
          for (int64_t m : {1, 2, 3, 8, 17, 64}) {
            QSpec s;
            s.bits = bits, s.group = group, s.asym = asym;
            s.rows = 1 + int64_t(rng() % (m >= 17 ? 40 : 90));
            s.cols = group * (1 + int64_t(rng() % (group == 32 ? 8 : 4)));
            s.act_bits = rng() % 4 == 0 ? 8 : 0;
            s.input_scale = rng() % 4 == 0;
            s.f32_meta = rng() % 5 == 0;
            check_int8(k, s, m, rng);
            if (HasFatalFailure()) return;
          }
}

TEST(Qbits, Int8KernelsLayerShapes) {
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (const auto& k : int8_kernels())
    for (int bits : {2, 3, 4, 8}) {
      QSpec s;
      s.bits = bits, s.group = 128, s.rows = 300, s.cols = 2048;
      check_int8(k, s, 1, rng);
      s.rows = 97, s.cols = 1024, s.asym = true, s.group = 64;
      check_int8(k, s, 70, rng);  // more than one 64-token block
      if (HasFatalFailure()) return;
    }
}

TEST(Qbits, RejectsInconsistentWeights) {
  std::mt19937_64 rng(1);
  for (const auto& k : int8_kernels()) {
    QSpec s;
    QuantizedWeight w = test::random_qweight(s, rng);
    w.scales.pop_back();
    std::vector<float> x(size_t(s.cols)), y(size_t(s.rows));
    EXPECT_THROW(k.fn(w, x.data(), 1, y.data()), Error);
    QuantizedWeight w2 = test::random_qweight(s, rng);
    w2.bits = 9;
    EXPECT_THROW(k.fn(w2, x.data(), 1, y.data()), Error);
    QuantizedWeight w3 = test::random_qweight(s, rng);
    w3.input_scale.assign(size_t(s.cols), 1.0f);
    w3.input_scale[5] = 0.0f;
    EXPECT_THROW(k.fn(w3, x.data(), 1, y.data()), Error);
  }
}


// The dispatch-table entry of every SIMD ISA against the format's scalar reference
// (kernels/matmul_qbits_scalar.cpp, fp32 activations), within the bound of the kernel
// family the selector picked.
TEST(Qbits, DispatchEntryMatchesFormatReference) {
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const KernelTable* scalar_table = kernels_for(Isa::Scalar);
  if (!scalar_table->matmul[int(DType::QBITS)]) GTEST_SKIP() << "no scalar QBITS reference linked";
  for (Isa isa : {Isa::Avx2, Isa::Avx512}) {
    const KernelTable* t = kernels_for(isa);
    if (!t) continue;
    ASSERT_NE(t->matmul[int(DType::QBITS)], nullptr);
    for (int bits = 2; bits <= 8; ++bits)
      for (int64_t m : {1, 3, 17}) {
        QSpec s;
        s.bits = bits, s.group = (bits % 3 == 0) ? 64 : 128, s.asym = bits % 2 == 1;
        s.rows = 1 + int64_t(rng() % 70), s.cols = s.group * (1 + int64_t(rng() % 4));
        s.act_bits = bits == 6 ? 8 : 0;
        s.input_scale = bits == 3;
        SCOPED_TRACE(std::string(isa_name(isa)) + " " + describe(s, m));
        QuantizedWeight w = test::random_qweight(s, rng);
        const std::vector<float> x = random_x(rng, m * s.cols);
        std::vector<float> y(size_t(m * s.rows), std::numeric_limits<float>::quiet_NaN()), ref(y.size());
        const WeightMatrix wm{DType::QBITS, s.rows, s.cols, &w};
        t->matmul[int(DType::QBITS)](x.data(), m, wm, y.data());
        scalar_table->matmul[int(DType::QBITS)](x.data(), m, wm, ref.data());
        const bool lut = qbits::choose(w, m, isa).family == qbits::Family::Lut;
        std::vector<double> tol = lut ? test::lut_bound(w, x.data(), m) : test::int8_act_bound(w, x.data(), m);
        for (size_t i = 0; i < y.size(); ++i) {
          // act_bits 8: the reference quantizes activations exactly as the kernel does.
          const double bound = s.act_bits == 8 ? 1e-4 * (std::fabs(ref[i]) + 1e-3) + tol[i] * 1e-3 : tol[i];
          ASSERT_LE(std::fabs(double(y[i]) - double(ref[i])), bound) << "y[" << i << "] " << y[i] << " vs " << ref[i];
        }
        EXPECT_FALSE(qbits_kernel_name(w, m).empty());
      }
  }
}

// 6..8-bit weights without --act-bits 8 run the int8 kernel on x and on its residual
// (qbits_select.cpp): the result must sit within the two-term bound, ~254x tighter than
// one int8 rounding of x, and act_bits 8 must keep the single int8 term.
TEST(Qbits, WideWeightsCarryActivationsInTwoInt8Terms) {
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (Isa isa : {Isa::Avx2, Isa::Avx512}) {
    const KernelTable* t = kernels_for(isa);
    if (!t) continue;
    for (int bits : {6, 7, 8})
      for (int64_t m : {1, 3, 17, 70}) {
        QSpec s;
        s.bits = bits, s.group = bits == 7 ? 64 : 128, s.asym = bits == 7, s.input_scale = bits == 6;
        // m = 70 with K = 1024: the residual is computed by several OpenMP threads.
        s.rows = 1 + int64_t(rng() % 70), s.cols = m == 70 ? 1024 : s.group * (1 + int64_t(rng() % 4));
        SCOPED_TRACE(std::string(isa_name(isa)) + " " + describe(s, m));
        QuantizedWeight w = test::random_qweight(s, rng);
        const std::vector<float> x = random_x(rng, m * s.cols);
        std::vector<float> y(size_t(m * s.rows), std::numeric_limits<float>::quiet_NaN());
        const WeightMatrix wm{DType::QBITS, s.rows, s.cols, &w};
        t->matmul[int(DType::QBITS)](x.data(), m, wm, y.data());
        const std::vector<double> exact = test::dequant_ref(w, x.data(), m);
        const std::vector<double> tol = test::int8_act_bound(w, x.data(), m, 254.0);
        for (size_t i = 0; i < y.size(); ++i)
          ASSERT_LE(std::fabs(double(y[i]) - exact[i]), tol[i]) << "y[" << i << "] " << y[i] << " vs " << exact[i];
        EXPECT_NE(qbits_kernel_name(w, m).find("2-term"), std::string::npos) << qbits_kernel_name(w, m);
        w.act_bits = 8;  // W*A8: one int8 term, per token
        EXPECT_EQ(qbits_kernel_name(w, m).find("2-term"), std::string::npos);
      }
  }
}

TEST(Qbits, PrepareBuildsLayoutsAndValidates) {
  std::mt19937_64 rng(11);
  QSpec s;
  s.bits = 3;
  QuantizedWeight w = test::random_qweight(s, rng);
  prepare_qbits(w);
  if (kernels().isa != Isa::Scalar) {
    EXPECT_EQ(w.packed_kind, qbits::kCpuPacks);
    ASSERT_NE(w.packed, nullptr);
  }
  prepare_qbits(w);  // idempotent
  QuantizedWeight bad = test::random_qweight(s, rng);
  bad.group = 48;
  EXPECT_THROW(prepare_qbits(bad), Error);
  // First use from many threads at once must build one layout, consistently.
  QuantizedWeight shared = test::random_qweight(s, rng);
  std::vector<float> x(size_t(s.cols), 0.25f);
  std::vector<std::vector<float>> ys(4, std::vector<float>(size_t(s.rows)));
  const WeightMatrix wm{DType::QBITS, s.rows, s.cols, &shared};
  std::vector<std::thread> th;
  for (int i = 0; i < 4; ++i)
    th.emplace_back([&, i] { kernels().matmul[int(DType::QBITS)](x.data(), 1, wm, ys[size_t(i)].data()); });
  for (auto& t : th) t.join();
  for (int i = 1; i < 4; ++i) EXPECT_EQ(ys[0], ys[size_t(i)]);
}

}  // namespace
}  // namespace anybit
