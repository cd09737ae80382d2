#include "quant/objective.h"

#include <algorithm>

#include "kernels/dispatch.h"
#include "core/error.h"
#include "quant/gptq.h"
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

std::vector<float> reference_target_operator(const std::vector<float>& h, const std::vector<float>& cross,
                                             int64_t n, double damp) {
  if (h.size() != size_t(n * n) || cross.size() != size_t(n * n))
    fail("reference target: statistics of {} and {} values for width {}", h.size(), cross.size(), n);
  double mean_diag = 0.0;
  for (int64_t i = 0; i < n; ++i) mean_diag += h[size_t(i * n + i)];
  mean_diag = mean_diag > 0.0 ? mean_diag / double(n) : 1.0;
  std::vector<double> a(size_t(n * n));
  for (size_t i = 0; i < a.size(); ++i) a[i] = h[i];
  for (int64_t i = 0; i < n; ++i) a[size_t(i * n + i)] += std::max(1e-6, damp) * mean_diag;
  if (!cholesky_lower(a, n)) fail("reference target: the calibration Hessian is not positive definite");
  // M^T = A^-1 (C - H)^T: column j of the right-hand side is row j of C - H.
  std::vector<float> mt(size_t(n * n));
#pragma omp parallel
  {
    std::vector<double> x(static_cast<size_t>(n));
#pragma omp for schedule(dynamic, 8)
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t i = 0; i < n; ++i) x[size_t(i)] = double(cross[size_t(j * n + i)]) - double(h[size_t(j * n + i)]);
      cholesky_solve(a, x.data(), n);
      for (int64_t i = 0; i < n; ++i) mt[size_t(i * n + j)] = float(x[size_t(i)]);
    }
  }
  return mt;
}

std::vector<float> apply_target_operator(const float* w, int64_t rows, int64_t cols, const std::vector<float>& mt) {
  // y = W · (M^T)^T = W M through the matmul kernel, then W + W M.
  std::vector<float> y(size_t(rows * cols));
  matmul(w, rows, WeightMatrix{DType::F32, cols, cols, mt.data()}, y.data());
  for (size_t i = 0; i < y.size(); ++i) y[i] += w[i];
  return y;
}

double output_error(const float* w, const QuantizedWeight& q, const float* h) {
  std::vector<float> d = effective_weight(q);
  for (size_t i = 0; i < d.size(); ++i) d[i] -= w[i];
  return output_error_of_delta(d.data(), q.rows, q.cols, h);
}

}  // namespace anybit::quant
