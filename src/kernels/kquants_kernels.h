// Entry points of the K-quant (GGUF Q2_K..Q6_K) SIMD matmul kernels; reached through the
// dispatch table only (AVX-512; the other tables run the scalar dequantizing reference).
#pragma once
#include "kernels/dispatch.h"

namespace anybit::avx512 {
void matmul_q4_k(const float* x, int64_t m, const WeightMatrix& w, float* y);
void matmul_q5_k(const float* x, int64_t m, const WeightMatrix& w, float* y);
void matmul_q6_k(const float* x, int64_t m, const WeightMatrix& w, float* y);
void matmul_q2_k(const float* x, int64_t m, const WeightMatrix& w, float* y);
void matmul_q3_k(const float* x, int64_t m, const WeightMatrix& w, float* y);
}  // namespace anybit::avx512
