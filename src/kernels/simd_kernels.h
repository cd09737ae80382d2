// Entry points of the ISA-specific kernels (defined in *_avx2.cpp / *_avx512.cpp and
// only ever called through the dispatch table, after a CPU feature check).
#pragma once
#include "kernels/dispatch.h"

#define ANYBIT_DECLARE_SIMD_KERNELS(ns)                                                     \
  namespace anybit::ns {                                                                    \
  void matmul_f32(const float* x, int64_t m, const WeightMatrix& w, float* y);              \
  void matmul_f16(const float* x, int64_t m, const WeightMatrix& w, float* y);              \
  void matmul_bf16(const float* x, int64_t m, const WeightMatrix& w, float* y);             \
  void matmul_q8_0(const float* x, int64_t m, const WeightMatrix& w, float* y);             \
  void matmul_q4_0(const float* x, int64_t m, const WeightMatrix& w, float* y);             \
  void rmsnorm(const float* x, const void* weight, DType wdtype, int64_t m, int64_t n,      \
               float eps, float* out);                                                      \
  void silu_mul(const float* gate, const float* up, int64_t m, int64_t n, int64_t ld,       \
                float* out);                                                                \
  }

ANYBIT_DECLARE_SIMD_KERNELS(avx2)
ANYBIT_DECLARE_SIMD_KERNELS(avx512)

#undef ANYBIT_DECLARE_SIMD_KERNELS
