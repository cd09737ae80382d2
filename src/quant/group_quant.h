// Group quantization primitives shared by every quantizer: the parameters of one
// group (scale, zero), its codes, its reconstruction error, and the per-group
// clipping search. The value of code q is scale * (q - zero) (quantized_weight.h);
// scales may be negative, which lets the symmetric grid put its extra negative
// level on whichever side holds the group's largest magnitude.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "quant/quantized_weight.h"

namespace anybit::quant {

struct GroupFormat {
  int bits = 4;
  bool asym = false;
  DType meta = DType::F16;  // on-disk type of scales and zeros: F16, BF16 or F32
  int qmax() const { return (1 << bits) - 1; }
  float sym_zero() const { return float(1 << (bits - 1)); }
};

struct GroupParams {
  float scale = 0.0f;
  float zero = 0.0f;
};

// The value `v` after a round trip through the on-disk type (quantizers choose codes
// against the stored parameters, so what is evaluated is what is loaded).
float round_meta(float v, DType t);

// Nearest codes for w[0..n) under p.
void encode_group(const float* w, int64_t n, const GroupFormat& f, GroupParams p, uint8_t* q);
// sum_c d_c (w_c - value(q_c))^2; d == nullptr weighs every element 1.
double group_error(const float* w, const float* d, int64_t n, GroupParams p, const uint8_t* q);

// Plain round-to-nearest parameters: symmetric puts the largest-magnitude element on
// the extreme negative level (scale = w_ext / -2^(bits-1)); asymmetric maps [min, max]
// onto [0, 2^bits - 1] with a fractional zero.
GroupParams rtn_params(const float* w, int64_t n, const GroupFormat& f);

struct SearchOptions {
  int grid = 20;            // shrink factors tried, from 1 down to min_shrink
  float min_shrink = 0.5f;
  int refine_iters = 2;     // least-squares refits of scale (and zero) for fixed codes
};

// Best parameters the clipping search finds for the objective group_error(d). Writes the
// codes to q. The plain RTN parameters are the first candidate, so the result is never
// worse than rtn_params on that objective.
GroupParams search_params(const float* w, const float* d, int64_t n, const GroupFormat& f,
                          const SearchOptions& o, uint8_t* q);

struct MatrixOptions {
  int bits = 4;
  int group = 128;
  bool asym = false;
  DType meta = DType::F16;
  int act_bits = 0;
  bool search = true;      // false = plain RTN
  SearchOptions search_opts;
  GroupFormat format() const { return GroupFormat{bits, asym, meta}; }
};

// The group size a matrix with rows of `cols` gets when `group` was asked for: `group` when it
// divides the row, else the largest smaller size of 64 and 32 that does (a hidden size of 576 or
// 960 is not whole groups of 128). 0 when none does (the row is not a multiple of 32).
int fitting_group(int group, int64_t cols);

// Checks bits/group/shape; throws anybit::Error naming `what`.
void check_matrix_options(const MatrixOptions& o, int64_t rows, int64_t cols, const std::string& what);

// An empty QuantizedWeight of the right shape and metadata (codes/scales/zeros sized).
QuantizedWeight make_weight(const MatrixOptions& o, int64_t rows, int64_t cols, const std::string& quantizer);

// Sets group g of row r of `qw` from its parameters and unpacked codes.
void store_group(QuantizedWeight& qw, int64_t r, int64_t g, GroupParams p, const uint8_t* codes);

// Round-to-nearest of a rows x cols fp32 matrix, with the clipping search when
// o.search. col_weight (cols values, nullable) weighs each input channel's error,
// e.g. the calibration second moment E[x_c^2]. Multi-threaded over rows.
QuantizedWeight quantize_rtn(const float* w, int64_t rows, int64_t cols, const MatrixOptions& o,
                             const float* col_weight);

// Whole matrix dequantized (rows x cols, input_scale NOT applied).
std::vector<float> dequantize(const QuantizedWeight& qw);

}  // namespace anybit::quant
