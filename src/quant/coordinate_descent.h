// Coordinate descent on the integer codes under the layer-output objective (QuantEase's
// idea), for fixed group parameters:
//   e_r = (w_r - w^_r)^T H (w_r - w^_r),  H = E[x x^T],  w^_c = s_g (q_c - z_g),
// the quantity GPTQ and the refit (refine.h) minimise row by row. With every other column
// of a row fixed, e_r is a one-dimensional quadratic in w^_k with its minimum at
//   w^_k* = w_k + (sum_{j != k} H_kj (w_j - w^_j)) / H_kk,
// so the grid level nearest to w^_k* is the best code for column k given the rest. A sweep
// visits every column once; a running product g = H (w - w^) makes each changed code cost
// O(cols), a sweep at most O(cols^2) per row, like GPTQ. A code changes only when the exact
// change of e_r is negative, so e_r never increases. GPTQ rounds each column once, against
// the columns still to come; coordinate descent revisits every column against all others,
// so it starts from GPTQ's codes and lowers e_r further.
#pragma once
#include <cstdint>
#include <vector>

#include "quant/group_quant.h"

namespace anybit::quant {

// Up to `sweeps` coordinate-descent sweeps over the codes (unpacked, rows x cols, natural
// column order; updated in place) for the fixed params (rows x cols/group). Columns with
// H_kk <= 0 (dead inputs) are left alone. A row stops early once a sweep changes nothing.
// Returns the number of code changes. Multi-threaded over rows.
int64_t cd_sweeps(const float* w, int64_t rows, int64_t cols, int group, const GroupFormat& f, const float* h,
                  const std::vector<GroupParams>& params, uint8_t* codes, int sweeps);

// A clipping search per group under the full H, for escaping the local minima of the
// sweeps and the refit (which only move one code, or the parameters for fixed codes): for
// every group of a row, the group's unconstrained optimum given the other groups,
// v = w^_G + H_GG^-1 (H (w - w^))_G, is covered by `grid` candidate grids (its range shrunk
// by factors 1 down to min_shrink, as search_params does for one group's own weights); for
// each, the group's codes start at the levels nearest v and take two sweeps restricted to
// the group; the candidate with the lowest e_r replaces the group's parameters and codes
// when it beats them. Returns the number of groups changed. Multi-threaded over rows.
int64_t cd_group_search(const float* w, int64_t rows, int64_t cols, int group, const GroupFormat& f, const float* h,
                        std::vector<GroupParams>& params, uint8_t* codes, int grid, float min_shrink = 0.5f);

// `passes` rounds of one sweep followed by the least-squares refit of the group parameters
// for the new codes (refit_group_params, refine.h), stopping early when a round changes
// neither codes nor parameters. With search_grid > 0, every round also runs
// cd_group_search before the refit. No step increases any row's e_r.
void cd_refine(const float* w, int64_t rows, int64_t cols, int group, const GroupFormat& f, const float* h,
               std::vector<GroupParams>& params, uint8_t* codes, int passes, int search_grid = 0);

}  // namespace anybit::quant
