// Any-bit (QBITS) kernel benchmarks at the 1B Llama shape (hidden 2048, 16 layers, FFN
// 8192, 8 KV heads of 64, vocab 8192: the shape of `anybit bench --shape llama-1b`).
//
//   BM_QbitsDecode/<bits>/<kernel>   every linear layer of one decode step (m = 1, about
//       1.0 B weights, distinct per layer so each streams from DRAM as in decode):
//       reports t/s (matmul-only upper bound of decode speed), GB/s of packed weights
//       read, and bpw (bits per weight including the layout's scales).
//   BM_QbitsPrefill/<bits>/<kernel>  all layers at m = 64: t/s = 64 tokens / time.
//   BM_QbitsGemv/<bits>/<kernel>/<shape>  one matrix, cache resident: kernel compute speed.
//   BM_KQuantDecode/<type>  the decode step with GGUF K-quant weights (random blocks) through
//       the dispatch table (AVX-512 kernels; the scalar reference elsewhere).
// Kernels: every QBITS kernel this CPU runs (avx512-vnni, avx512-lut, avx2-int8, avx2-lut).
// The machine is shared: run with --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// and read the medians.
#include <benchmark/benchmark.h>

#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/kquants.h"
#include "kernels/dispatch.h"
#include "kernels/qbits_kernels.h"
#include "kernels/qbits_lut.h"
#include "kernels/qbits_pack.h"
#include "quant/random_qbits.h"

namespace anybit {
namespace {

struct Mat {
  int64_t rows, cols;
};
// One layer of the 1B shape (q, k, v, o, gate, up, down); the LM head once per token.
constexpr Mat kLayer[] = {{2048, 2048}, {512, 2048}, {512, 2048}, {2048, 2048},
                          {8192, 2048}, {8192, 2048}, {2048, 8192}};
constexpr Mat kLmHead = {8192, 2048};
constexpr int kLayers = 16;

// The weights of one bit width, packed for one kernel family; the raw codes are
// dropped after packing to halve the memory.
struct Model {
  int bits = 0;
  qbits::Family family = qbits::Family::Int8;
  std::vector<std::shared_ptr<QuantizedWeight>> w;
  size_t packed_bytes = 0;
  int64_t params = 0;
};

Model& model_for(int bits, const qbits::Kernel& k) {
  static std::unique_ptr<Model> cur;
  if (cur && cur->bits == bits && cur->family == k.family) return *cur;
  cur.reset();
  auto m = std::make_unique<Model>();
  m->bits = bits, m->family = k.family;
  uint64_t seed = 1;
  std::vector<float> x(8192, 0.01f), y(8192);
  auto add = [&](Mat s) {
    auto w = make_random_qweight(s.rows, s.cols, bits, 128, false, seed++);
    k.run(*w, x.data(), 1, y.data());  // packs
    if (k.family == qbits::Family::Int8) {
      const auto& p = qbits::int8_pack(*w);
      m->packed_bytes += p.rb_stride * size_t(p.nrb);
    } else {
      const auto& p = qbits::lut_pack(*w);
      m->packed_bytes += p.rb_stride * size_t(p.nrb);
    }
    m->params += s.rows * s.cols;
    w->codes.clear();
    w->codes.shrink_to_fit();
    m->w.push_back(std::move(w));
  };
  for (int l = 0; l < kLayers; ++l)
    for (Mat s : kLayer) add(s);
  add(kLmHead);
  cur = std::move(m);
  return *cur;
}

void run_model(const Model& md, const qbits::Kernel& k, int64_t m, const std::vector<float>& x, std::vector<float>& y) {
  for (const auto& w : md.w) k.run(*w, x.data(), m, y.data());
}

void decode(benchmark::State& state, int bits, const qbits::Kernel* k) {
  const Model& md = model_for(bits, *k);
  std::vector<float> x(8192), y(8192);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& v : x) v = nd(rng);
  for (auto _ : state) run_model(md, *k, 1, x, y);
  state.counters["t/s"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s"] = benchmark::Counter(double(md.packed_bytes) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bpw"] = 8.0 * double(md.packed_bytes) / double(md.params);
}

void prefill(benchmark::State& state, int bits, const qbits::Kernel* k) {
  const Model& md = model_for(bits, *k);
  constexpr int64_t kM = 64;
  std::vector<float> x(size_t(kM) * 8192), y(size_t(kM) * 8192);
  std::mt19937 rng(2);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& v : x) v = nd(rng);
  for (auto _ : state) run_model(md, *k, kM, x, y);
  state.counters["t/s"] = benchmark::Counter(double(kM), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GMAC/s"] =
      benchmark::Counter(double(kM) * double(md.params) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void gemv(benchmark::State& state, int bits, const qbits::Kernel* k, Mat s, int64_t m) {
  auto w = make_random_qweight(s.rows, s.cols, bits, 128, false, 5);
  std::vector<float> x(size_t(m * s.cols), 0.3f), y(size_t(m * s.rows));
  k->run(*w, x.data(), m, y.data());
  for (auto _ : state) k->run(*w, x.data(), m, y.data());
  state.counters["Gw/s"] = benchmark::Counter(double(s.rows * s.cols * m) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// Every layer of the 1B shape as random K-quant blocks (f16 super-block scales ~ 1e-3).
struct KModel {
  DType t = DType::F32;
  std::vector<std::vector<uint8_t>> w;
  std::vector<Mat> shape;
  size_t bytes = 0;
};

KModel& kmodel_for(DType t) {
  static std::unique_ptr<KModel> cur;
  if (cur && cur->t == t) return *cur;
  cur.reset();
  auto m = std::make_unique<KModel>();
  m->t = t;
  std::mt19937_64 rng(3);
  const size_t bb = kquant_block_bytes(t);
  auto add = [&](Mat s) {
    std::vector<uint8_t> v(dtype_row_bytes(t, s.cols) * size_t(s.rows));
    for (size_t i = 0; i + 8 <= v.size(); i += 8) {
      const uint64_t r = rng();
      std::memcpy(v.data() + i, &r, 8);
    }
    const uint16_t h = f32_to_f16(1e-3f);
    for (size_t b = 0; b < v.size() / bb; ++b) {
      uint8_t* blk = v.data() + b * bb;
      switch (t) {
        case DType::Q4_K: case DType::Q5_K: std::memcpy(blk, &h, 2), std::memcpy(blk + 2, &h, 2); break;
        case DType::Q6_K: std::memcpy(blk + 208, &h, 2); break;
        case DType::Q2_K: std::memcpy(blk + 80, &h, 2), std::memcpy(blk + 82, &h, 2); break;
        case DType::Q3_K: std::memcpy(blk + 108, &h, 2); break;
        default: break;
      }
    }
    m->bytes += v.size();
    m->w.push_back(std::move(v));
    m->shape.push_back(s);
  };
  for (int l = 0; l < kLayers; ++l)
    for (Mat s : kLayer) add(s);
  add(kLmHead);
  cur = std::move(m);
  return *cur;
}

void kdecode(benchmark::State& state, DType t) {
  const KModel& md = kmodel_for(t);
  std::vector<float> x(8192), y(8192);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& v : x) v = nd(rng);
  const MatmulFn f = kernels().matmul[int(t)];
  for (auto _ : state)
    for (size_t i = 0; i < md.w.size(); ++i)
      f(x.data(), 1, WeightMatrix{t, md.shape[i].rows, md.shape[i].cols, md.w[i].data()}, y.data());
  state.counters["t/s"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s"] = benchmark::Counter(double(md.bytes) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

int register_all() {
  for (DType t : {DType::Q4_K, DType::Q6_K, DType::Q2_K, DType::Q3_K, DType::Q5_K})
    benchmark::RegisterBenchmark((std::string("BM_KQuantDecode/") + std::string(dtype_name(t))).c_str(), kdecode, t)
        ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(1.0);
  for (const auto& k : qbits::available_kernels()) {
    for (int bits = 2; bits <= 8; ++bits) {
      if (!k.supports(bits)) continue;
      const std::string tag = std::to_string(bits) + "/" + k.name;
      benchmark::RegisterBenchmark(("BM_QbitsDecode/" + tag).c_str(), decode, bits, &k)
          ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(1.0);
      benchmark::RegisterBenchmark(("BM_QbitsPrefill/" + tag).c_str(), prefill, bits, &k)
          ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(1.0);
      benchmark::RegisterBenchmark(("BM_QbitsGemv/" + tag + "/2048x2048").c_str(), gemv, bits, &k, Mat{2048, 2048},
                                   int64_t(1))
          ->UseRealTime()->Unit(benchmark::kMicrosecond);
    }
  }
  return 0;
}
const int registered = register_all();

}  // namespace
}  // namespace anybit
