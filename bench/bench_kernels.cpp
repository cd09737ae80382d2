// Kernel micro-benchmarks at the 1B Llama shapes (hidden 2048, FFN 8192, 8 KV heads of
// 64, vocab 8192). GEMV (m = 1) reports effective weight bandwidth: weights rotate over
// enough copies (>= 512 MiB) that every call streams them from DRAM, as decode does.
// GEMM (m = 64, prefill) reports GFLOP/s. Run with OMP_NUM_THREADS=<threads> and
// --benchmark_repetitions=N --benchmark_report_aggregates_only=true for medians.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "kernels/dispatch.h"

namespace anybit {
namespace {

struct Shape {
  const char* name;
  int64_t n, k;
};
constexpr Shape kShapes[] = {
    {"q_o", 2048, 2048}, {"k_v", 512, 2048}, {"gate_up", 8192, 2048},
    {"down", 2048, 8192}, {"lm_head", 8192, 2048},
};

// Weight copies for one (dtype, shape): random values, repeated `copies` times.
struct Weights {
  std::vector<uint8_t> bytes;
  size_t matrix_bytes = 0;
  int copies = 1;
};

Weights make_weights(DType t, int64_t n, int64_t k, bool stream_from_dram) {
  Weights w;
  w.matrix_bytes = dtype_row_bytes(t, k) * size_t(n);
  constexpr size_t kStreamBytes = size_t(512) << 20;
  w.copies = stream_from_dram ? int((kStreamBytes + w.matrix_bytes - 1) / w.matrix_bytes) : 1;
  w.bytes.resize(w.matrix_bytes * size_t(w.copies));
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  const size_t rb = dtype_row_bytes(t, k);
  std::vector<float> row(static_cast<size_t>(k));
  for (int64_t r = 0; r < n; ++r) {
    uint8_t* dst = w.bytes.data() + size_t(r) * rb;
    for (auto& v : row) v = nd(rng);
    switch (t) {
      case DType::F32: std::memcpy(dst, row.data(), rb); break;
      case DType::F16:
        for (int64_t c = 0; c < k; ++c) {
          const uint16_t h = f32_to_f16(row[size_t(c)]);
          std::memcpy(dst + 2 * c, &h, 2);
        }
        break;
      case DType::BF16:
        for (int64_t c = 0; c < k; ++c) {
          const uint16_t h = f32_to_bf16(row[size_t(c)]);
          std::memcpy(dst + 2 * c, &h, 2);
        }
        break;
      default: {  // Q8_0 / Q4_0: random codes, small scales
        const size_t bb = t == DType::Q8_0 ? 34 : 18;
        for (int64_t b = 0; b < k / 32; ++b) {
          const uint16_t d = f32_to_f16(0.001f);
          std::memcpy(dst + size_t(b) * bb, &d, 2);
          for (size_t i = 2; i < bb; ++i) dst[size_t(b) * bb + i] = uint8_t(rng());
        }
      }
    }
  }
  for (int c = 1; c < w.copies; ++c)
    std::memcpy(w.bytes.data() + size_t(c) * w.matrix_bytes, w.bytes.data(), w.matrix_bytes);
  return w;
}

// Google Benchmark calls a benchmark function several times (iteration estimate,
// repetitions): keep the last weight set instead of regenerating 512 MiB each time.
const Weights& cached_weights(DType t, int64_t n, int64_t k, bool stream_from_dram) {
  static Weights w;
  static DType ct;
  static int64_t cn = -1, ck = -1;
  static bool cs = false;
  if (ct != t || cn != n || ck != k || cs != stream_from_dram) {
    w = Weights{};
    w = make_weights(t, n, k, stream_from_dram);
    ct = t, cn = n, ck = k, cs = stream_from_dram;
  }
  return w;
}

void bench_matmul(benchmark::State& state, const KernelTable* table, DType t, Shape s,
                  int64_t m) {
  const Weights& w = cached_weights(t, s.n, s.k, m == 1);
  std::vector<float> x(size_t(m * s.k)), y(size_t(m * s.n));
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& v : x) v = nd(rng);
  const MatmulFn fn = table->matmul[int(t)];
  int copy = 0;
  for (auto _ : state) {
    const WeightMatrix wm{t, s.n, s.k, w.bytes.data() + size_t(copy) * w.matrix_bytes};
    fn(x.data(), m, wm, y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
    if (++copy == w.copies) copy = 0;
  }
  state.counters["bytes"] = benchmark::Counter(double(w.matrix_bytes),
                                               benchmark::Counter::kIsIterationInvariantRate);
  state.counters["flops"] = benchmark::Counter(2.0 * double(m * s.n * s.k),
                                               benchmark::Counter::kIsIterationInvariantRate);
}

void bench_rmsnorm(benchmark::State& state, const KernelTable* table, int64_t m) {
  const int64_t n = 2048;
  std::vector<float> x(size_t(m * n), 0.5f), w(size_t(n), 1.0f), out(size_t(m * n));
  for (auto _ : state) {
    table->rmsnorm(x.data(), w.data(), DType::F32, m, n, 1e-5f, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["bytes"] = benchmark::Counter(8.0 * double(m * n),
                                               benchmark::Counter::kIsIterationInvariantRate);
}

void bench_silu(benchmark::State& state, const KernelTable* table, int64_t m) {
  const int64_t n = 8192;
  std::vector<float> gu(size_t(m * 2 * n), 0.3f), out(size_t(m * n));
  for (auto _ : state) {
    table->silu_mul(gu.data(), gu.data() + n, m, n, 2 * n, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["elems"] = benchmark::Counter(double(m * n),
                                               benchmark::Counter::kIsIterationInvariantRate);
}

void register_all() {
  for (Isa isa : {Isa::Avx512, Isa::Avx2, Isa::Scalar}) {
    const KernelTable* table = kernels_for(isa);
    if (!table) continue;
    const std::string in(isa_name(isa));
    for (DType t : {DType::BF16, DType::F16, DType::F32, DType::Q8_0, DType::Q4_0})
      for (int64_t m : {1, 64}) {
        // The scalar reference and the extra dtypes only at the most common shape.
        for (const Shape& s : kShapes) {
          const bool main_case = (t == DType::BF16 || t == DType::F16) && isa != Isa::Scalar;
          if (!main_case && std::string(s.name) != "gate_up") continue;
          if (isa == Isa::Scalar && m > 1) continue;
          const std::string name = "matmul/" + in + "/" + std::string(dtype_name(t)) + "/" +
                                   s.name + "/m=" + std::to_string(m);
          benchmark::RegisterBenchmark(name.c_str(), bench_matmul, table, t, s, m)->UseRealTime();
        }
      }
    for (int64_t m : {1, 64}) {
      benchmark::RegisterBenchmark(("rmsnorm/" + in + "/m=" + std::to_string(m)).c_str(),
                                   bench_rmsnorm, table, m)->UseRealTime();
      benchmark::RegisterBenchmark(("silu_mul/" + in + "/m=" + std::to_string(m)).c_str(),
                                   bench_silu, table, m)->UseRealTime();
    }
  }
}

}  // namespace
}  // namespace anybit

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  anybit::register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
