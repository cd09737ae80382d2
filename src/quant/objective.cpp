#include "quant/objective.h"

#include <algorithm>

#include "kernels/dispatch.h"
#include "quant/group_quant.h"

namespace anybit::quant {

std::vector<float> effective_weight(const QuantizedWeight& q) {
  std::vector<float> w = dequantize(q);
  if (!q.input_scale.empty())
    for (int64_t r = 0; r < q.rows; ++r)
      for (int64_t c = 0; c < q.cols; ++c) w[size_t(r * q.cols + c)] /= q.input_scale[size_t(c)];
  return w;
}

double output_error_of_delta(const float* delta, int64_t rows, int64_t cols, const float* h) {
  double e = 0.0;
  if (!h) {
    for (int64_t i = 0; i < rows * cols; ++i) e += double(delta[i]) * double(delta[i]);
    return e;
  }
  // delta · H through the matmul kernel (H is symmetric, so H^T = H), in row blocks to
  // bound the scratch.
  const int64_t block = 256;
  std::vector<float> y(size_t(block * cols));
  for (int64_t r0 = 0; r0 < rows; r0 += block) {
    const int64_t m = std::min(block, rows - r0);
    matmul(delta + r0 * cols, m, WeightMatrix{DType::F32, cols, cols, h}, y.data());
    for (int64_t i = 0; i < m * cols; ++i) e += double(delta[r0 * cols + i]) * double(y[size_t(i)]);
  }
  return e;
}

double output_error(const float* w, const QuantizedWeight& q, const float* h) {
  std::vector<float> d = effective_weight(q);
  for (size_t i = 0; i < d.size(); ++i) d[i] -= w[i];
  return output_error_of_delta(d.data(), q.rows, q.cols, h);
}

}  // namespace anybit::quant
