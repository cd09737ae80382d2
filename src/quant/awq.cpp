#include "quant/awq.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "quant/objective.h"

namespace anybit::quant {

std::vector<float> awq_scales(const std::vector<float>& mean_abs, float alpha) {
  const size_t k = mean_abs.size();
  std::vector<float> s(k, 1.0f);
  if (alpha == 0.0f || k == 0) return s;
  float mx = 0.0f;
  for (float v : mean_abs) mx = std::max(mx, v);
  if (!(mx > 0.0f)) return s;
  // Dead channels would get a zero scale; a floor keeps 1/s finite and harmless.
  const float floor_v = mx * 1e-4f;
  float lo = std::numeric_limits<float>::max(), hi = 0.0f;
  for (size_t c = 0; c < k; ++c) {
    s[c] = std::pow(std::max(mean_abs[c], floor_v), alpha);
    lo = std::min(lo, s[c]);
    hi = std::max(hi, s[c]);
  }
  const float norm = std::sqrt(lo * hi);
  for (float& v : s) v /= norm;
  return s;
}

std::vector<float> scale_columns(const float* w, int64_t rows, int64_t cols, const std::vector<float>& s) {
  std::vector<float> out(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[size_t(r * cols + c)] = w[r * cols + c] * s[size_t(c)];
  return out;
}

double awq_objective(const float* w, const QuantizedWeight& q, const std::vector<float>& second_moment, const float* h) {
  if (h) return output_error(w, q, h);
  std::vector<float> d = effective_weight(q);
  double e = 0.0;
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t c = 0; c < q.cols; ++c) {
      const double v = double(d[size_t(r * q.cols + c)]) - double(w[r * q.cols + c]);
      e += double(second_moment[size_t(c)]) * v * v;
    }
  return e;
}

AwqResult search_awq(const float* w, int64_t rows, int64_t cols, const std::vector<float>& mean_abs,
                     const std::vector<float>& second_moment, const float* h, const AwqOptions& o,
                     const ScaledQuantizer& quantize) {
  AwqResult best;
  best.error = std::numeric_limits<double>::infinity();
  const int grid = std::max(1, o.grid);
  std::vector<float> cw(static_cast<size_t>(cols)), hs(h ? size_t(cols * cols) : 0);
  for (int i = 0; i <= grid; ++i) {
    const float alpha = float(i) / float(grid);
    const std::vector<float> s = awq_scales(mean_abs, alpha);
    // The scaled input is x / s: its moments scale by 1/s.
    for (int64_t c = 0; c < cols; ++c) cw[size_t(c)] = second_moment[size_t(c)] / (s[size_t(c)] * s[size_t(c)]);
    if (h)
      for (int64_t a = 0; a < cols; ++a)
        for (int64_t b = 0; b < cols; ++b) hs[size_t(a * cols + b)] = h[a * cols + b] / (s[size_t(a)] * s[size_t(b)]);
    QuantizedWeight q = quantize(scale_columns(w, rows, cols, s), cw.data(), h ? hs.data() : nullptr);
    if (alpha != 0.0f) q.input_scale = s;
    const double e = awq_objective(w, q, second_moment, h);
    if (e < best.error) {
      best.error = e;
      best.alpha = alpha;
      best.q = std::move(q);
    }
  }
  return best;
}

}  // namespace anybit::quant
