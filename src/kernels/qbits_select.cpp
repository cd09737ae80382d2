// Run-time choice of the any-bit kernel per (weight, m): the dispatch-table entries of
// each ISA and the measured choice between the int8 and table-lookup families.
#include <algorithm>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <omp.h>
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

// Best of several runs on one thread, in thread CPU time: the probe compares kernels'
// compute speed, and on a shared machine wall time of a multi-threaded region mostly
// measures the scheduler.
double probe_seconds(const Kernel& k, const QuantizedWeight& w, const std::vector<float>& x, int64_t m,
                     std::vector<float>& y) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  k.run(w, x.data(), m, y.data());  // packs the weight, warms the caches
  double best = 1e30;
  for (int r = 0; r < 7; ++r) {
    timespec t0, t1;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
    k.run(w, x.data(), m, y.data());
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
    best = std::min(best, double(t1.tv_sec - t0.tv_sec) + 1e-9 * double(t1.tv_nsec - t0.tv_nsec));
  }
  omp_set_num_threads(saved);
  return best;
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
      // a memory-bound matrix would time the memory system instead): 1024 x 2048.
      const int64_t mm = kClassM[batch_class(m)];
      auto probe = make_random_qweight(1024, 2048, w.bits, 128, false, 99);
      std::vector<float> x(size_t(mm * 2048), 0.5f), y(size_t(mm * 1024));
      for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i * 7919 % 23) - 11) * 0.1f;
      double best = 0.0;
      for (const Kernel* k : cands) {
        // The LUT must be more than 25% faster: the probe is cache resident, and when
        // decode streams weights from DRAM the LUT kernels (2 weight streams per tile
        // against 4, plus the table builds) lost up to 20% of their in-cache lead in
        // measurements on AMD Zen 5 and Intel Xeon; the int8 layout also serves prefill,
        // so a weight then keeps one packed copy.
        const double raw = probe_seconds(*k, *probe, x, mm, y);
        const double t = raw * (k->family == Family::Int8 ? 0.75 : 1.0);
        if (std::getenv("ANYBIT_QBITS_VERBOSE"))
          std::fprintf(stderr, "qbits probe: %s bits=%d m=%lld: %.1f us\n", k->name, w.bits, (long long)mm, raw * 1e6);
        if (!c.k || t < best) c.k = k, best = t;
      }
    }
  });
  return *c.k;
}

}  // namespace qbits

namespace {

// ANYBIT_QBITS_KERNEL=f32: the weights dequantized to fp32 (1/input_scale folded in) and
// run by the fp32 matmul with fp32 activations, whatever act_bits says. A quality-analysis
// switch: it separates the error of the weight codes from that of the kernels' int8
// activations (docs/QUANTIZATION.md). Dequantizes on every call: slow, never the default.
bool f32_reference() {
  static const bool on = [] {
    const char* e = std::getenv("ANYBIT_QBITS_KERNEL");
    return e && std::string(e) == "f32";
  }();
  return on;
}

void matmul_dequantized(const QuantizedWeight& q, const float* x, int64_t m, float* y) {
  thread_local std::vector<float> wf;
  wf.resize(size_t(q.rows * q.cols));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < q.rows; ++r) {
    float* row = wf.data() + r * q.cols;
    q.dequantize_row(r, row);
    if (!q.input_scale.empty())
      for (int64_t c = 0; c < q.cols; ++c) row[c] *= 1.0f / q.input_scale[size_t(c)];
  }
  kernels().matmul[int(DType::F32)](x, m, WeightMatrix{DType::F32, q.rows, q.cols, wf.data()}, y);
}

// Activations in two int8 terms for weights of 6 bits and more without --act-bits 8: the
// residual r = x - (x as the int8 kernel quantizes it) is quantized again, so x is carried
// to ~2^-15 of each group's maximum instead of 2^-8. The kernel runs once on 2m rows
// [x; r] (its tiles feed every unpacked weight vector to all their token rows, so the
// weights are read once) and the two halves are added. At these widths the single int8
// rounding of x was the larger error (W8 g128 perplexity +0.066% against +0.024% with fp32
// activations, docs/QUANTIZATION.md); at 5 bits and less the weights dominate.
bool two_term_activations(const QuantizedWeight& q) { return q.act_bits == 0 && q.bits >= 6; }

using QuantizeActs = void (*)(const float*, int64_t, int64_t, int, bool, const float*, qbits::ActQ&);

void run_two_term(const qbits::Kernel& k, QuantizeActs quantize, const QuantizedWeight& q, const float* x, int64_t m,
                  float* y) {
  const int64_t K = q.cols, N = q.rows, G = K / q.group, group = q.group;
  const qbits::PackSet& set = qbits::pack_set(q);
  const float* inv = set.inv_input_scale.empty() ? nullptr : set.inv_input_scale.data();
  qbits::ActQ& a = qbits::act_scratch(m, K, G);
  quantize(x, m, K, q.group, false, inv, a);  // exactly what the kernel does with x
  thread_local std::vector<float> xx, yy;
  xx.resize(size_t(2 * m * K));
  yy.resize(size_t(2 * m * N));
  // Pointers, not the vectors, inside the region: each OpenMP thread has its own thread_local.
  float* xp = xx.data();
  const int8_t* aq = a.q;
  const float* axs = a.xs;
  std::memcpy(xp, x, size_t(m * K) * sizeof(float));
#pragma omp parallel for schedule(static) if (m * K >= 65536)
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = 0; c < K; ++c) {
      const float xq = float(aq[i * K + c]) * axs[i * G + c / group];  // x * inv as quantized
      xp[(m + i) * K + c] = x[i * K + c] - (inv ? xq / inv[c] : xq);
    }
  k.run(q, xp, 2 * m, yy.data());
  const float* yp = yy.data();
  for (int64_t j = 0; j < m * N; ++j) y[j] = yp[j] + yp[m * N + j];
}

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
  if (f32_reference()) return matmul_dequantized(q, x, m, y);
  const qbits::Kernel& k = qbits::choose(q, m, Isa::Avx512);
  if (k.family == qbits::Family::Int8 && two_term_activations(q)) return run_two_term(k, avx512::qbits_quantize_acts, q, x, m, y);
  k.run(q, x, m, y);
}
}  // namespace avx512

namespace avx2 {
void matmul_qbits(const float* x, int64_t m, const WeightMatrix& w, float* y) {
  if (m <= 0) return;
  const QuantizedWeight& q = qweight(w);
  if (f32_reference()) return matmul_dequantized(q, x, m, y);
  const qbits::Kernel& k = qbits::choose(q, m, Isa::Avx2);
  if (k.family == qbits::Family::Int8 && two_term_activations(q)) return run_two_term(k, avx2::qbits_quantize_acts, q, x, m, y);
  k.run(q, x, m, y);
}
}  // namespace avx2

void prepare_qbits(QuantizedWeight& w) {
  qbits::pack_set(w);  // validates
  const Isa isa = kernels().isa;
  if (isa == Isa::Scalar || f32_reference()) return;
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
  if (f32_reference()) return "f32 reference (dequantized)";
  const qbits::Kernel& k = qbits::choose(w, m, isa);
  return k.family == qbits::Family::Int8 && two_term_activations(w) ? std::string(k.name) + " (2-term int8 activations)"
                                                                     : std::string(k.name);
}

}  // namespace anybit
