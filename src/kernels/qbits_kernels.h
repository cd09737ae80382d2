// Entry points of the any-bit (QBITS) CPU kernels. Each ISA file defines its kernels in
// its own namespace; they are reached through the dispatch table entry matmul_qbits
// (qbits_select.cpp), which picks a kernel family per (weight, m) from the measured table.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/dispatch.h"
#include "quant/quantized_weight.h"

namespace anybit::qbits {
struct ActQ;
}

#define ANYBIT_DECLARE_QBITS_KERNELS(ns)                                                      \
  namespace anybit::ns {                                                                      \
  /* int8 layout (qbits_pack.h): integer dot products against int8 activations */            \
  void qbits_int8_matmul(const QuantizedWeight& w, const float* x, int64_t m, float* y);     \
  /* lut layout (qbits_lut.h): table lookups, bits 2..4 only */                               \
  void qbits_lut_matmul(const QuantizedWeight& w, const float* x, int64_t m, float* y);      \
  /* activation quantization, bit-identical to qbits::quantize_acts_scalar */                 \
  void qbits_quantize_acts(const float* x, int64_t m, int64_t k, int group, bool per_token,  \
                           const float* inv_input_scale, qbits::ActQ& out);                  \
  /* the dispatch-table entry: chooses among this ISA's kernels */                            \
  void matmul_qbits(const float* x, int64_t m, const WeightMatrix& w, float* y);              \
  }

ANYBIT_DECLARE_QBITS_KERNELS(avx2)
ANYBIT_DECLARE_QBITS_KERNELS(avx512)

#undef ANYBIT_DECLARE_QBITS_KERNELS

namespace anybit::qbits {

enum class Family { Int8, Lut };

struct Kernel {
  const char* name;  // "avx512-vnni", "avx512-lut", "avx2-int8", "avx2-lut"
  Isa isa;
  Family family;
  int min_bits, max_bits;
  void (*run)(const QuantizedWeight& w, const float* x, int64_t m, float* y);
  bool supports(int bits) const { return bits >= min_bits && bits <= max_bits; }
};

// Every compiled kernel this CPU can run.
const std::vector<Kernel>& available_kernels();

// The kernel that `isa`'s dispatch entry runs for (w, m): among that ISA's kernels for
// w.bits, the fastest for m's batch class in a timing measured once per (isa, bits,
// batch class) on a small cache-resident problem (ANYBIT_QBITS_KERNEL=int8|lut forces a
// family where it applies).
const Kernel& choose(const QuantizedWeight& w, int64_t m, Isa isa);

// Scalar reference with the kernels' exact arithmetic (int8 activations, integer group
// dots): the ground truth for the SIMD kernels' tests. The fp32-activation reference of
// the format itself is in matmul_qbits_scalar.cpp.
void matmul_int8_ref(const QuantizedWeight& w, const float* x, int64_t m, float* y);
}  // namespace anybit::qbits
