// GPTQ-style quantization: columns are rounded one at a time and each rounding error is
// compensated on the columns not yet rounded, using the inverse of H = E[x x^T] from
// calibration (optimal brain surgeon updates, computed through the upper Cholesky
// factor of H^-1). Group parameters come from the clipping search (group_quant.h).
#pragma once
#include <cstdint>
#include <vector>

#include "quant/group_quant.h"

namespace anybit::quant {

struct GptqOptions {
  float damp = 0.01f;      // added to H's diagonal, relative to its mean
  int block = 128;         // columns per lazy-update block (a multiple of the group)
  bool act_order = true;   // round columns in decreasing E[x_c^2] order
  // Group parameters fixed up front from the unmodified weights (always so with
  // act_order); otherwise each group's parameters are chosen when its first column is
  // reached, from the already-compensated weights.
  bool static_groups = false;
  // Rounds of group-parameter refinement after the GPTQ pass (refine.h): refit scales
  // (and zeros) for the codes under the full H, re-round on the new grids, keep the
  // better per row. 0 = plain GPTQ.
  int refine = 0;
  // Rounds of coordinate descent on the codes after that (coordinate_descent.h): one sweep
  // over every column against all the others, then the group-parameter refit. 0 = off.
  int cd_passes = 0;
  // With cd_passes: candidate grids per group in each round (cd_group_search); 0 = off.
  int cd_search_grid = 0;
};

// In-place lower Cholesky factor of the n x n matrix a (row-major; the upper triangle
// is zeroed). False if a is not positive definite.
bool cholesky_lower(std::vector<double>& a, int64_t n);
// Solves L L^T x = b in place (x returned in b, n values) with l from cholesky_lower.
void cholesky_solve(const std::vector<double>& l, double* b, int64_t n);

// w: rows x cols fp32; h: cols x cols E[x x^T] (symmetric). Multi-threaded.
QuantizedWeight quantize_gptq(const float* w, int64_t rows, int64_t cols, const MatrixOptions& o, const float* h,
                              const GptqOptions& g);

}  // namespace anybit::quant
