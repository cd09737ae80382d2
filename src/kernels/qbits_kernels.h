// Entry points of the any-bit (QBITS) CPU kernels. Each ISA file defines its kernels in
// its own namespace; they are reached through the dispatch table entry matmul_qbits
// (qbits_select.cpp), which picks a kernel family per (weight, m) from the measured table.
#pragma once
#include <cstdint>

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
// Scalar reference with the kernels' exact arithmetic (int8 activations, integer group
// dots): the ground truth for the SIMD kernels' tests. The fp32-activation reference of
// the format itself is in matmul_qbits_scalar.cpp.
void matmul_int8_ref(const QuantizedWeight& w, const float* x, int64_t m, float* y);
}  // namespace anybit::qbits
