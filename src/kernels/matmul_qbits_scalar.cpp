// Scalar reference matmul for QBITS weights (quant/quantized_weight.h): the definition
// of what a QBITS linear layer computes. Fast kernels must agree with it up to fp32
// summation order.
//
// For activations x[m, K] and a QuantizedWeight w (N = w.rows, K = w.cols):
//   1. Input scale (AWQ). When w.input_scale is non-empty, x'[i, c] = x[i, c] * inv[c]
//      with inv[c] = 1.0f / w.input_scale[c] computed in fp32 (a multiply by the
//      reciprocal, not a division), else x' = x.
//   2. Activations. act_bits == 0: x' is used as is (fp32).
//      act_bits == 8: each token (row i) is quantized to int8 symmetric with one scale:
//        amax = max_c |x'[i, c]|;  inv = amax > 0 ? 127.0f / amax : 0;
//        q[c] = clamp(nearbyint(x'[i, c] * inv), -127, 127)   (round half to even);
//        xs = amax / 127.0f;  x''[i, c] = q[c] * xs.
//   3. y[i, r] = sum_c x''[i, c] * value(r, c), with value(r, c) =
//      scales[r][c / group] * (code(r, c) - zero(r, c / group)) as in dequantize_row
//      (fp32 product), summed here in double.
#include <cmath>
#include <vector>

#include "core/error.h"
#include "kernels/scalar_ref.h"
#include "quant/quantized_weight.h"

namespace anybit::scalar {

void matmul_qbits(const float* x, int64_t m, const WeightMatrix& wm, float* y) {
  const auto& w = *static_cast<const QuantizedWeight*>(wm.data);
  const int64_t n = w.rows, k = w.cols;
  if (n != wm.rows || k != wm.cols) fail("qbits matmul: weight is {}x{}, the matrix view says {}x{}", n, k, wm.rows, wm.cols);
  if (!w.input_scale.empty() && int64_t(w.input_scale.size()) != k)
    fail("qbits matmul: input_scale has {} values for {} columns", w.input_scale.size(), k);

  std::vector<float> xa(size_t(m * k));
  std::vector<float> inv(w.input_scale.size());
  for (size_t c = 0; c < inv.size(); ++c) inv[c] = 1.0f / w.input_scale[c];
  for (int64_t i = 0; i < m; ++i) {
    float* xi = xa.data() + i * k;
    for (int64_t c = 0; c < k; ++c) xi[c] = inv.empty() ? x[i * k + c] : x[i * k + c] * inv[size_t(c)];
    if (w.act_bits == 8) {
      float amax = 0.0f;
      for (int64_t c = 0; c < k; ++c) amax = std::fmax(amax, std::fabs(xi[c]));
      const float qinv = amax > 0.0f ? 127.0f / amax : 0.0f, xs = amax / 127.0f;
      for (int64_t c = 0; c < k; ++c) {
        float q = std::nearbyint(xi[c] * qinv);
        q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
        xi[c] = q * xs;
      }
    }
  }

#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(k));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < n; ++r) {
      w.dequantize_row(r, row.data());
      for (int64_t i = 0; i < m; ++i) {
        const float* xi = xa.data() + i * k;
        // Four independent partial sums: same result class as one double sum, much faster.
        double acc[4] = {0, 0, 0, 0};
        int64_t c = 0;
        for (; c + 4 <= k; c += 4)
          for (int j = 0; j < 4; ++j) acc[j] += double(xi[c + j]) * double(row[size_t(c + j)]);
        for (; c < k; ++c) acc[0] += double(xi[c]) * double(row[size_t(c)]);
        y[i * n + r] = float((acc[0] + acc[1]) + (acc[2] + acc[3]));
      }
    }
  }
}

}  // namespace anybit::scalar
