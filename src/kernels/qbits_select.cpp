// Run-time choice of the any-bit kernel per (weight, m): the dispatch-table entries of
// each ISA and the measured choice between the int8 and table-lookup families.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/qbits.h"
#include "kernels/qbits_kernels.h"
#include "kernels/qbits_lut.h"
#include "kernels/qbits_pack.h"
#include "kernels/qbits_prepare.h"
#include "quant/random_qbits.h"

namespace anybit {

namespace qbits {

namespace {

bool cpu_has_vbmi() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vbmi");
}

std::vector<Kernel> make_list() {
  std::vector<Kernel> v;
  if (kernels_for(Isa::Avx512)) {
    v.push_back({"avx512-vnni", Isa::Avx512, Family::Int8, 2, 8, avx512::qbits_int8_matmul});
    if (cpu_has_vbmi()) v.push_back({"avx512-lut", Isa::Avx512, Family::Lut, 2, 4, avx512::qbits_lut_matmul});
  }
  if (kernels_for(Isa::Avx2)) {
    v.push_back({"avx2-int8", Isa::Avx2, Family::Int8, 2, 8, avx2::qbits_int8_matmul});
    v.push_back({"avx2-lut", Isa::Avx2, Family::Lut, 2, 4, avx2::qbits_lut_matmul});
  }
  return v;
}

// Batch classes: decode (1), small batches (2..7), prefill (>= 8).
int batch_class(int64_t m) { return m <= 1 ? 0 : m < 8 ? 1 : 2; }
constexpr int64_t kClassM[3] = {1, 4, 32};

double median_seconds(const Kernel& k, const QuantizedWeight& w, const std::vector<float>& x, int64_t m,
                      std::vector<float>& y) {
  k.run(w, x.data(), m, y.data());  // packs the weight, warms the caches
  std::vector<double> t;
  for (int r = 0; r < 5; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    k.run(w, x.data(), m, y.data());
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Choice {
  std::once_flag once;
  const Kernel* k = nullptr;
};

}  // namespace

const std::vector<Kernel>& available_kernels() {
  static const std::vector<Kernel> list = make_list();
  return list;
}

const Kernel& choose(const QuantizedWeight& w, int64_t m, Isa isa) {
  static Choice table[3][9][3][2];
  if (w.bits < 2 || w.bits > 8) fail("quantized weight: bits {} is outside 2..8", w.bits);
  const bool a8 = w.act_bits == 8;
  Choice& c = table[int(isa)][w.bits][batch_class(m)][a8];
  std::call_once(c.once, [&] {
    std::vector<const Kernel*> cands;
    for (const Kernel& k : available_kernels())
      if (k.isa == isa && k.supports(w.bits) && !(a8 && k.family == Family::Lut)) cands.push_back(&k);
    if (cands.empty()) fail("no {} kernel for {}-bit weights", isa_name(isa), w.bits);
    const char* force = std::getenv("ANYBIT_QBITS_KERNEL");
    if (force && *force) {
      const std::string f = force;
      if (f != "int8" && f != "lut") fail("ANYBIT_QBITS_KERNEL={}: expected int8 or lut", f);
      for (const Kernel* k : cands)
        if ((k->family == Family::Lut) == (f == "lut")) c.k = k;
    }
    if (!c.k && cands.size() == 1) c.k = cands[0];
    if (!c.k) {
      // A layer-like problem that stays in cache (what separates the kernels is compute;
      // a memory-bound matrix would time the memory system instead): 256 x 2048.
      const int64_t mm = kClassM[batch_class(m)];
      auto probe = make_random_qweight(256, 2048, w.bits, 128, false, 99);
      std::vector<float> x(size_t(mm * 2048), 0.5f), y(size_t(mm * 256));
      for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i * 7919 % 23) - 11) * 0.1f;
      double best = 0.0;
      for (const Kernel* k : cands) {
        // The int8 family is preferred on near-ties: its layout also serves prefill.
        const double t = median_seconds(*k, *probe, x, mm, y) * (k->family == Family::Int8 ? 0.95 : 1.0);
        if (!c.k || t < best) c.k = k, best = t;
      }
    }
  });
  return *c.k;
}

}  // namespace qbits

namespace {

const QuantizedWeight& qweight(const WeightMatrix& w) {
  if (!w.data) fail("qbits matmul: weight has no data");
  const auto& q = *static_cast<const QuantizedWeight*>(w.data);
  if (q.rows != w.rows || q.cols != w.cols)
    fail("qbits matmul: weight is [{}, {}] but the matrix says [{}, {}]", q.rows, q.cols, w.rows, w.cols);
  return q;
}

}  // namespace

namespace avx512 {
void matmul_qbits(const float* x, int64_t m, const WeightMatrix& w, float* y) {
  if (m <= 0) return;
  const QuantizedWeight& q = qweight(w);
  qbits::choose(q, m, Isa::Avx512).run(q, x, m, y);
}
}  // namespace avx512

namespace avx2 {
void matmul_qbits(const float* x, int64_t m, const WeightMatrix& w, float* y) {
  if (m <= 0) return;
  const QuantizedWeight& q = qweight(w);
  qbits::choose(q, m, Isa::Avx2).run(q, x, m, y);
}
}  // namespace avx2

void prepare_qbits(QuantizedWeight& w) {
  qbits::pack_set(w);  // validates
  const Isa isa = kernels().isa;
  if (isa == Isa::Scalar) return;
  for (int64_t m : {int64_t(1), int64_t(4), int64_t(64)}) {
    if (qbits::choose(w, m, isa).family == qbits::Family::Lut)
      qbits::lut_pack(w);
    else
      qbits::int8_pack(w);
  }
}

std::string qbits_kernel_name(const QuantizedWeight& w, int64_t m) {
  const Isa isa = kernels().isa;
  if (isa == Isa::Scalar) return "scalar";
  return qbits::choose(w, m, isa).name;
}

}  // namespace anybit
