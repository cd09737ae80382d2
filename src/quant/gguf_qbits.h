// llama.cpp's GGUF block formats as QBITS matrices, for the kernels that run QBITS and no
// GGUF blocks (the CUDA backend, docs/CUDA.md).
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "quant/quantized_weight.h"

namespace anybit::quant {

// True when each 32-weight group of `t` is one scale (and one offset) times codes of 4, 5
// or 8 bits, so a QBITS matrix with groups of 32 holds the same values: Q8_0 and Q4_0
// (symmetric), Q4_K and Q5_K (asymmetric; the offset becomes a fractional zero point, equal
// up to fp32 rounding).
bool gguf_blocks_map_exactly(DType t);

// A rows x cols matrix of GGUF blocks (row-major, rows of dtype_row_bytes(t, cols)) as
// QBITS with groups of 32. The formats above keep their codes; the others (Q6_K, Q3_K,
// Q2_K: sub-blocks of 16 weights with their own scales) are requantized from their values
// to symmetric 8 bits with f16 scales by round-to-nearest (8.5 bits per weight): at most
// one 8-bit step, 1/128 of the group's largest magnitude, off (a fraction of the source's
// own step). Throws on a non-GGUF dtype or cols that are not whole blocks.
QuantizedWeight qbits_from_gguf_blocks(DType t, const void* data, int64_t rows, int64_t cols);

}  // namespace anybit::quant
