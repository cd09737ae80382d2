// Group-parameter refinement for fixed integer codes under the layer-output objective
//   e_r = (w_r - w^_r)^T H (w_r - w^_r),  H = E[x x^T],
// the quantity GPTQ minimises row by row. The clipping search (group_quant.h) picks each
// group's scale from the group's own weights and the diagonal of H; once the codes are
// fixed, w^_r is linear in the row's parameters (value = s_g * q - s_g * z_g), so the
// parameters of all groups of a row that minimise e_r jointly, cross-group terms of H
// included, are a small weighted least-squares problem. The result is rounded to the
// on-disk type and kept only where it is better, so refinement never increases e_r.
#pragma once
#include <cstdint>
#include <vector>

#include "quant/group_quant.h"

namespace anybit::quant {

// e_r for every row of the dequantized matrix `deq` (rows x cols) against `w`; h is
// cols x cols. Multi-threaded.
std::vector<double> row_output_errors(const float* w, const float* deq, int64_t rows, int64_t cols, const float* h);

// Dequantized rows x cols from unpacked codes (natural column order) and per-group params.
std::vector<float> dequantize_codes(const uint8_t* codes, const std::vector<GroupParams>& params, int64_t rows,
                                    int64_t cols, int group);

// Replaces params (rows x cols/group) by the least-squares optimum of each row for the
// given codes (unpacked, rows x cols), rounded to f.meta; a row keeps its parameters
// unless the rounded optimum lowers e_r. Symmetric groups refit the scales (the zero is
// fixed by the format); asymmetric groups refit scale and offset, stored as a fractional
// zero. Returns the number of rows that changed. Multi-threaded over rows.
int64_t refit_group_params(const float* w, int64_t rows, int64_t cols, int group, const GroupFormat& f,
                           const float* h, const uint8_t* codes, std::vector<GroupParams>& params);

}  // namespace anybit::quant
