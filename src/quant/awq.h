// Activation-aware per-input-channel scaling (the AWQ idea): channels that carry large
// activations get their weights scaled up before rounding, so they lose less relative
// precision; the kernel divides x by the same scale (QuantizedWeight::input_scale),
// leaving the fp32 function unchanged before rounding. The scale is
//   s_c = mean|x_c|^alpha, normalised by sqrt(max s * min s),
// with alpha chosen per matrix by grid search on the calibration output error.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "quant/group_quant.h"

namespace anybit::quant {

// s(alpha) for the given E|x_c|. alpha = 0 gives all ones.
std::vector<float> awq_scales(const std::vector<float>& mean_abs, float alpha);

// w' = w * diag(s) (rows x cols, column c multiplied by s[c]).
std::vector<float> scale_columns(const float* w, int64_t rows, int64_t cols, const std::vector<float>& s);

// Quantizes an already scaled matrix; `col_weight` is E[x'_c^2] of the scaled input and
// `h_scaled` its E[x' x'^T] (nullable).
using ScaledQuantizer = std::function<QuantizedWeight(const std::vector<float>& w_scaled, const float* col_weight,
                                                      const float* h_scaled)>;

struct AwqOptions {
  int grid = 20;  // alpha in {0, 1/grid, ..., 1}
};

struct AwqResult {
  QuantizedWeight q;  // input_scale set unless alpha == 0
  float alpha = 0.0f;
  double error = 0.0;
};

// Grid search of alpha. second_moment = E[x_c^2]; h = E[x x^T] or nullptr (then the error
// uses only the diagonal). `quantize` produces the weight for each candidate; the
// search's alpha = 0 candidate is exactly `quantize` on the unscaled matrix.
AwqResult search_awq(const float* w, int64_t rows, int64_t cols, const std::vector<float>& mean_abs,
                     const std::vector<float>& second_moment, const float* h, const AwqOptions& o,
                     const ScaledQuantizer& quantize);

// The layer-output error of q against w (diagonal E[x^2] when h is null).
double awq_objective(const float* w, const QuantizedWeight& q, const std::vector<float>& second_moment, const float* h);

}  // namespace anybit::quant
