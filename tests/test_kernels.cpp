// SIMD kernels against the scalar reference: every ISA this CPU runs x every weight dtype
// x many shapes, with fresh random inputs each run (the seed is printed on failure and can
// be replayed with ANYBIT_TEST_SEED=<seed>).
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/dispatch.h"
#include "kernels/scalar_ref.h"

namespace anybit {
namespace {

constexpr double kU = 1.0 / (1 << 24);  // fp32 unit roundoff

uint64_t test_seed() {
  if (const char* s = std::getenv("ANYBIT_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  std::random_device rd;
  return (uint64_t(rd()) << 32) | rd();
}

std::vector<const KernelTable*> simd_tables() {
  std::vector<const KernelTable*> out;
  for (Isa isa : {Isa::Avx2, Isa::Avx512})
    if (const KernelTable* t = kernels_for(isa)) out.push_back(t);
  return out;
}

// Bytes placed so that they end exactly at a PROT_NONE page: a kernel reading one byte
// past its input crashes the test instead of passing silently.
class GuardedBytes {
 public:
  explicit GuardedBytes(size_t n) : n_(n) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    map_len_ = (n + page - 1) / page * page + page;
    void* p = mmap(nullptr, map_len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    base_ = static_cast<uint8_t*>(p);
    mprotect(base_ + map_len_ - page, page, PROT_NONE);
    data_ = base_ + map_len_ - page - n;
  }
  ~GuardedBytes() { munmap(base_, map_len_); }
  GuardedBytes(const GuardedBytes&) = delete;
  GuardedBytes& operator=(const GuardedBytes&) = delete;
  uint8_t* data() { return data_; }
  float* floats() { return reinterpret_cast<float*>(data_); }
  size_t size() const { return n_; }

 private:
  size_t n_, map_len_;
  uint8_t* base_;
  uint8_t* data_;
};

// Random weights of `rows` x `cols` in dtype `t` (finite values only).
void fill_weights(std::mt19937_64& rng, DType t, int64_t rows, int64_t cols, uint8_t* dst) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const size_t rb = dtype_row_bytes(t, cols);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = dst + size_t(r) * rb;
    switch (t) {
      case DType::F32:
        for (int64_t c = 0; c < cols; ++c) reinterpret_cast<float*>(row)[c] = nd(rng);
        break;
      case DType::F16:
        for (int64_t c = 0; c < cols; ++c) {
          const uint16_t h = f32_to_f16(nd(rng));
          std::memcpy(row + 2 * c, &h, 2);
        }
        break;
      case DType::BF16:
        for (int64_t c = 0; c < cols; ++c) {
          const uint16_t h = f32_to_bf16(nd(rng));
          std::memcpy(row + 2 * c, &h, 2);
        }
        break;
      case DType::Q8_0:
      case DType::Q4_0: {
        const size_t bb = t == DType::Q8_0 ? 34 : 18;
        for (int64_t b = 0; b < cols / 32; ++b) {
          uint8_t* blk = row + size_t(b) * bb;
          const uint16_t d = f32_to_f16(nd(rng) * 0.05f);
          std::memcpy(blk, &d, 2);
          for (size_t i = 2; i < bb; ++i) blk[i] = uint8_t(rng());
        }
        break;
      }
      default:
        FAIL() << "unexpected dtype";
    }
  }
}

// Worst-case bound for a dot product of length k summed in fp32: each SIMD lane adds at
// most ceil(k / 8) products with one rounding each (8 = narrowest vector), then a
// reduction tree of <= 4 levels and the final rounding; the double-accumulated reference
// adds one more rounding. Scaled by sum |x||w|, doubled for margin.
double dot_tolerance(int64_t k, double abs_sum) {
  return 2.0 * kU * double((k + 7) / 8 + 6) * abs_sum + 1e-30;
}

void check_matmul(const KernelTable& table, DType t, int64_t m, int64_t n, int64_t k,
                  std::mt19937_64& rng) {
  SCOPED_TRACE(fmt::format("isa={} dtype={} m={} n={} k={}", isa_name(table.isa), dtype_name(t), m, n, k));
  const size_t rb = dtype_row_bytes(t, k);
  GuardedBytes w(rb * size_t(n));
  fill_weights(rng, t, n, k, w.data());
  GuardedBytes x(size_t(m * k) * sizeof(float));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t i = 0; i < m * k; ++i) x.floats()[i] = nd(rng);

  // Output with guard cells after it: poisoned with NaN, guards must stay untouched.
  constexpr int64_t kGuard = 16;
  std::vector<float> y(size_t(m * n + kGuard), std::numeric_limits<float>::quiet_NaN());
  for (int64_t i = 0; i < kGuard; ++i) y[size_t(m * n + i)] = -12345.0f;
  std::vector<float> ref(size_t(m * n));
  const WeightMatrix wm{t, n, k, w.data()};
  scalar::matmul(x.floats(), m, wm, ref.data());
  ASSERT_NE(table.matmul[int(t)], nullptr);
  table.matmul[int(t)](x.floats(), m, wm, y.data());

  std::vector<float> wrow(static_cast<size_t>(k));
  int bad = 0;
  for (int64_t j = 0; j < n && bad < 5; ++j) {
    dequantize_row(t, w.data() + size_t(j) * rb, wrow.data(), k);
    for (int64_t i = 0; i < m && bad < 5; ++i) {
      double abs_sum = 0.0;
      for (int64_t c = 0; c < k; ++c) abs_sum += std::fabs(double(x.floats()[i * k + c]) * wrow[size_t(c)]);
      const float got = y[size_t(i * n + j)], want = ref[size_t(i * n + j)];
      const double tol = dot_tolerance(k, abs_sum);
      if (!(std::fabs(double(got) - double(want)) <= tol)) {
        ADD_FAILURE() << "y[" << i << "," << j << "] = " << got << ", reference " << want
                      << ", tolerance " << tol;
        ++bad;
      }
    }
  }
  for (int64_t i = 0; i < kGuard; ++i) ASSERT_EQ(y[size_t(m * n + i)], -12345.0f) << "wrote past y";
}

TEST(Kernels, MatmulMatchesScalarReference) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed) + " (replay with ANYBIT_TEST_SEED)");
  std::mt19937_64 rng(seed);
  const auto tables = simd_tables();
  if (tables.empty()) GTEST_SKIP() << "no SIMD ISA on this CPU";
  const int64_t ms[] = {1, 2, 3, 7, 16, 33, 64};
  // Odd sizes exercise every tile remainder (rows) and the K tail (partial 32-block).
  const int64_t plain_n[] = {1, 3, 6, 7, 17, 64, 97};
  const int64_t plain_k[] = {1, 5, 16, 31, 32, 33, 63, 100, 256, 515};
  const int64_t quant_n[] = {1, 5, 8, 19, 70};
  const int64_t quant_k[] = {32, 64, 96, 256, 544};
  std::uniform_int_distribution<int> pick(0, 1 << 30);
  for (const KernelTable* table : tables) {
    for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0}) {
      const bool quant = t == DType::Q8_0 || t == DType::Q4_0;
      for (int64_t m : ms) {
        // Every (n, k) pair for m = 1 and a few; a random sample of them otherwise.
        const int64_t* ns = quant ? quant_n : plain_n;
        const int64_t* ks = quant ? quant_k : plain_k;
        const int nn = quant ? 5 : 7, nk = quant ? 5 : 10;
        for (int a = 0; a < nn; ++a)
          for (int b = 0; b < nk; ++b) {
            if (m > 3 && pick(rng) % 3 != 0) continue;
            check_matmul(*table, t, m, ns[a], ks[b], rng);
            if (HasFatalFailure()) return;
          }
      }
      // Shapes of a real model layer (several tiles per thread, K blocking).
      check_matmul(*table, t, 5, 300, 2048, rng);
      check_matmul(*table, t, 70, 130, 1024, rng);
    }
  }
}

TEST(Kernels, MatmulLargeK) {
  // K > 4096 with m >= 16 takes the transposed-activation path with K split into several
  // blocks (partial sums carried between them); the dot path covers the rest, with fewer
  // activation rows per cache block than m.
  const uint64_t seed = test_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (const KernelTable* table : simd_tables()) {
    for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0}) {
      const bool quant = t == DType::Q8_0 || t == DType::Q4_0;
      check_matmul(*table, t, 20, 13, quant ? 4128 : 4133, rng);   // xt, one K block + tail
      check_matmul(*table, t, 100, 9, quant ? 8192 : 8209, rng);   // xt, several K blocks
      check_matmul(*table, t, 7, 11, quant ? 8192 : 8197, rng);    // dot
      if (HasFatalFailure()) return;
    }
  }
}

TEST(Kernels, RmsNormMatchesScalarReference) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (const KernelTable* table : simd_tables()) {
    for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0}) {
      for (int64_t m : {1, 3, 7})
        for (int64_t n : {1, 5, 8, 16, 17, 32, 100, 2048, 2053}) {
          if (t == DType::Q8_0 && n % 32 != 0) continue;
          SCOPED_TRACE(fmt::format("isa={} wdtype={} m={} n={}", isa_name(table->isa), dtype_name(t), m, n));
          GuardedBytes x(size_t(m * n) * 4);
          const float scale = std::exp(nd(rng) * 3.0f);  // rows far from unit size
          for (int64_t i = 0; i < m * n; ++i) x.floats()[i] = nd(rng) * scale;
          GuardedBytes w(dtype_row_bytes(t, n));
          fill_weights(rng, t, 1, n, w.data());
          std::vector<float> out(size_t(m * n) + 8, std::numeric_limits<float>::quiet_NaN());
          for (int g = 0; g < 8; ++g) out[size_t(m * n + g)] = 7.0f;
          std::vector<float> ref(size_t(m * n));
          scalar::rmsnorm(x.floats(), w.data(), t, m, n, 1e-5f, ref.data());
          table->rmsnorm(x.floats(), w.data(), t, m, n, 1e-5f, out.data());
          // Sum of squares in fp32 lanes: relative error <= (n / 8 + 6) u, halved by the
          // square root; then the two products of the output.
          const double rel = 2.0 * kU * double(n / 8 + 10);
          for (int64_t i = 0; i < m * n; ++i)
            ASSERT_NEAR(out[size_t(i)], ref[size_t(i)], rel * std::fabs(ref[size_t(i)]) + 1e-37)
                << "at " << i;
          for (int g = 0; g < 8; ++g) ASSERT_EQ(out[size_t(m * n + g)], 7.0f) << "wrote past out";
        }
    }
  }
}

TEST(Kernels, SiluMulMatchesScalarReference) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const float specials[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 20.0f, -20.0f, 87.0f, -87.0f,
                            88.5f, -88.5f, 100.0f, -100.0f, 1e30f, -1e30f};
  for (const KernelTable* table : simd_tables()) {
    for (bool fused : {false, true})
      for (int64_t m : {1, 2, 5})
        for (int64_t n : {1, 7, 8, 15, 16, 17, 100, 1000}) {
          SCOPED_TRACE(fmt::format("isa={} fused={} m={} n={}", isa_name(table->isa), fused, m, n));
          const int64_t ld = fused ? 2 * n : n;
          GuardedBytes g(size_t(m * ld) * 4), u(size_t(m * ld) * 4);
          for (int64_t i = 0; i < m * ld; ++i) {
            const int kind = int(rng() % 8);
            g.floats()[i] = kind == 0 ? specials[rng() % std::size(specials)] : nd(rng) * (kind == 1 ? 30.0f : 4.0f);
            u.floats()[i] = nd(rng);
          }
          const float* gate = g.floats();
          const float* up = fused ? g.floats() + n : u.floats();
          std::vector<float> out(size_t(m * n) + 8, std::numeric_limits<float>::quiet_NaN());
          for (int gi = 0; gi < 8; ++gi) out[size_t(m * n + gi)] = 7.0f;
          std::vector<float> ref(size_t(m * n));
          scalar::silu_mul(gate, up, m, n, ld, ref.data());
          table->silu_mul(gate, up, m, n, ld, out.data());
          for (int64_t i = 0; i < m; ++i)
            for (int64_t c = 0; c < n; ++c) {
              const float r = ref[size_t(i * n + c)], o = out[size_t(i * n + c)];
              if (o == r) continue;  // includes overflow to the same infinity
              // exp polynomial, division and products: a few ulp. Where silu(g) < 1e-30
              // the reference underflows differently (exp(-g) overflows to inf for
              // g < -88.7), so allow that much absolute error in silu, scaled by |up|.
              const double upv = std::fabs(double(up[i * ld + c]));
              ASSERT_NEAR(o, r, 2e-6 * std::fabs(r) + 1e-30 * (upv > 1.0 ? upv : 1.0))
                  << "gate " << gate[i * ld + c] << " up " << up[i * ld + c];
            }
          for (int gi = 0; gi < 8; ++gi) ASSERT_EQ(out[size_t(m * n + gi)], 7.0f) << "wrote past out";
        }
  }
}

TEST(KernelDispatch, TablesAreComplete) {
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    const KernelTable* t = kernels_for(isa);
    if (!t) continue;
    EXPECT_EQ(t->isa, isa);
    for (DType d : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0})
      EXPECT_NE(t->matmul[int(d)], nullptr) << isa_name(isa) << " " << dtype_name(d);
    EXPECT_NE(t->rmsnorm, nullptr);
    EXPECT_NE(t->silu_mul, nullptr);
    if (isa != Isa::Scalar) {  // really SIMD code, not the scalar fallback
      EXPECT_NE(t->matmul[int(DType::BF16)], kernels_for(Isa::Scalar)->matmul[int(DType::BF16)]);
      EXPECT_NE(t->rmsnorm, kernels_for(Isa::Scalar)->rmsnorm);
      EXPECT_NE(t->silu_mul, kernels_for(Isa::Scalar)->silu_mul);
    }
  }
  ASSERT_NE(kernels_for(Isa::Scalar), nullptr);
  __builtin_cpu_init();
  EXPECT_EQ(kernels_for(Isa::Avx512) != nullptr,
            __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni"));
  EXPECT_EQ(kernels_for(Isa::Avx2) != nullptr, __builtin_cpu_supports("avx2") &&
                                                  __builtin_cpu_supports("fma") &&
                                                  __builtin_cpu_supports("f16c"));
}

// Without ANYBIT_ISA, kernels() is the best table this CPU runs. With it, the subprocess
// branch below checks the forced choice (kernels() decides once per process).
TEST(KernelDispatch, PicksBestIsaOrTheForcedOne) {
  if (const char* expect = std::getenv("ANYBIT_EXPECT_ISA")) {
    if (std::string(expect) == "error") {
      EXPECT_THROW(kernels(), Error);
    } else {
      EXPECT_EQ(isa_name(kernels().isa), expect);
    }
    return;
  }
  if (!std::getenv("ANYBIT_ISA")) {
    const Isa best = kernels_for(Isa::Avx512) ? Isa::Avx512
                     : kernels_for(Isa::Avx2) ? Isa::Avx2
                                              : Isa::Scalar;
    EXPECT_EQ(kernels().isa, best);
  }
  const std::string self = "/proc/self/exe";
  char exe[4096];
  const ssize_t len = readlink(self.c_str(), exe, sizeof(exe) - 1);
  ASSERT_GT(len, 0);
  exe[len] = 0;
  auto run = [&](const std::string& isa, const std::string& expect) {
    const std::string cmd = "ANYBIT_ISA=" + isa + " ANYBIT_EXPECT_ISA=" + expect + " '" +
                            std::string(exe) +
                            "' --gtest_filter=KernelDispatch.PicksBestIsaOrTheForcedOne "
                            ">/dev/null 2>&1";
    return std::system(cmd.c_str());
  };
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    const std::string name(isa_name(isa));
    EXPECT_EQ(run(name, kernels_for(isa) ? name : "error"), 0) << "ANYBIT_ISA=" << name;
  }
  EXPECT_EQ(run("sse9", "error"), 0) << "unknown ANYBIT_ISA must throw";
}

}  // namespace
}  // namespace anybit
