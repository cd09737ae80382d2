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

// E for the fp32 matrix w against its quantized version. With h == nullptr, the plain
// squared weight error (H = identity).
double output_error(const float* w, const QuantizedWeight& q, const float* h);

}  // namespace anybit::quant
