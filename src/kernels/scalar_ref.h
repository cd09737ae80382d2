// Scalar reference implementations of the dispatch-table ops.
#pragma once
#include "kernels/dispatch.h"

namespace anybit::scalar {
void matmul(const float* x, int64_t m, const WeightMatrix& w, float* y);
void rmsnorm(const float* x, const void* weight, DType wdtype, int64_t m, int64_t n, float eps,
             float* out);
void silu_mul(const float* gate, const float* up, int64_t m, int64_t n, int64_t ld, float* out);
}  // namespace anybit::scalar
