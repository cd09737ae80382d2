// Scalar reference kernels: the ground truth the SIMD variants are tested against.
#include <cmath>
#include <vector>

#include "kernels/dispatch.h"
#include "kernels/scalar_ref.h"

namespace anybit::scalar {

void matmul(const float* x, int64_t m, const WeightMatrix& w, float* y) {
  const int64_t n = w.rows, k = w.cols;
  const size_t row_bytes = dtype_row_bytes(w.dtype, k);
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(k));
#pragma omp for schedule(static)
    for (int64_t j = 0; j < n; ++j) {
      dequantize_row(w.dtype, static_cast<const uint8_t*>(w.data) + size_t(j) * row_bytes, row.data(), k);
      for (int64_t i = 0; i < m; ++i) {
        const float* xi = x + i * k;
        double acc = 0.0;
        for (int64_t c = 0; c < k; ++c) acc += double(xi[c]) * double(row[size_t(c)]);
        y[i * n + j] = float(acc);
      }
    }
  }
}

void rmsnorm(const float* x, const void* weight, DType wdtype, int64_t m, int64_t n, float eps,
             float* out) {
  std::vector<float> w(static_cast<size_t>(n));
  dequantize_row(wdtype, weight, w.data(), n);
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * n;
    double ss = 0.0;
    for (int64_t c = 0; c < n; ++c) ss += double(xi[c]) * double(xi[c]);
    const float inv = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
    for (int64_t c = 0; c < n; ++c) out[i * n + c] = xi[c] * inv * w[size_t(c)];
  }
}

void silu_mul(const float* gate, const float* up, int64_t m, int64_t n, int64_t ld, float* out) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = 0; c < n; ++c) {
      const float g = gate[i * ld + c];
      out[i * n + c] = g / (1.0f + std::exp(-g)) * up[i * ld + c];
    }
}

}  // namespace anybit::scalar
