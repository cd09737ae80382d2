// The layer-output error a quantized matrix causes on calibration inputs:
//   E = sum_r (w_r - w^_r)^T H (w_r - w^_r),  H = E[x x^T]
// i.e. the mean (over tokens) squared error of the layer's output, summed over outputs.
// w^ is the effective weight the kernel applies to x: dequantized values divided by
// input_scale (quantized_weight.h).
#pragma once
#include <cstdint>
#include <vector>

#include "quant/quantized_weight.h"

namespace anybit::quant {

// Dequantized rows with input_scale folded back in (rows x cols).
std::vector<float> effective_weight(const QuantizedWeight& q);

// E for the difference matrix `delta` (rows x cols); H is cols x cols, symmetric.
double output_error_of_delta(const float* delta, int64_t rows, int64_t cols, const float* h);

// Matching the unquantized model's outputs. With sequential calibration a layer sees
// inputs x from the already quantized layers below it, while the unquantized model feeds
// it r on the same tokens. The weight that minimises E||W r - W^ x||^2 over W^ is
//   W_t = W E[r x^T] H^-1 = W (I + M),  M = (E[r x^T] - H) H^-1,  H = E[x x^T],
// and E||W r - W^ x||^2 = tr((W^ - W_t) H (W^ - W_t)^T) + const, so quantizing W_t with
// any H-weighted quantizer (GPTQ) targets the reference outputs, correcting upstream error.
// Returns M^T (cols x cols, row-major), with H damped by damp * mean(diag H) (a ridge, as
// GPTQ's); all zeros where r == x. Throws if H is not positive definite after damping.
std::vector<float> reference_target_operator(const std::vector<float>& h, const std::vector<float>& cross,
                                             int64_t cols, double damp);

// W_t = W (I + M) for the operator above (rows x cols).
std::vector<float> apply_target_operator(const float* w, int64_t rows, int64_t cols, const std::vector<float>& mt);

// E for the fp32 matrix w against its quantized version. With h == nullptr, the plain
// squared weight error (H = identity).
double output_error(const float* w, const QuantizedWeight& q, const float* h);

}  // namespace anybit::quant
