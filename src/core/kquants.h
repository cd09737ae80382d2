// llama.cpp's GGUF "K-quant" block formats (ggml's Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): block
// sizes, scale decoding and the reference dequantization (the ground truth for the SIMD
// kernels in kernels/kquants_*.cpp). Each super-block covers 256 weights.
//
// Layouts (byte offsets within one block; f16 = IEEE half):
//   Q4_K (144): d f16 @0, dmin f16 @2, scales[12] @4, qs[128] @16.
//       8 sub-blocks of 32 with 6-bit scale sc_j and min m_j (packed, see
//       decode_k4_scales); w = d * sc_j * q - dmin * m_j, q = 4 bits. Weight 64c + l
//       (c = 0..3, l = 0..31) is the low nibble of qs[32c + l], weight 64c + 32 + l its
//       high nibble; sub-block j = weight / 32.
//   Q5_K (176): d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48. As Q4_K with a
//       5th bit: weight 64c + 32h + l (h = 0/1) adds 16 when bit 2c + h of qh[l] is set.
//   Q6_K (210): ql[128] @0, qh[64] @128, scales[16] int8 @192, d f16 @208. 16 sub-blocks
//       of 16: w = d * sc_j * (q - 32), q = 6 bits. For half n (128 weights, ql + 64n,
//       qh + 32n) and l = 0..31: weight 128n + l uses the low nibble of ql[l] and bits
//       0..1 of qh[l]; +32: low nibble of ql[l + 32], bits 2..3; +64: high nibble of
//       ql[l], bits 4..5; +96: high nibble of ql[l + 32], bits 6..7. j = weight / 16.
//   Q2_K (84): scales[16] @0 (low nibble scale, high nibble min), qs[64] @16, d @80,
//       dmin @82. 16 sub-blocks of 16: w = d * sc_j * q - dmin * m_j, q = 2 bits; weight
//       128n + 32s + l (s = 0..3, l = 0..31) is bits 2s..2s+1 of qs[32n + l].
//   Q3_K (110): hmask[32] @0, qs[64] @32, scales[12] @96, d @108. 16 sub-blocks of 16
//       with 6-bit scales (decode_k3_scales, stored + 32): w = d * sc_j * (q - 4) where q
//       = 2 low bits (as Q2_K) + 4 * (bit 4n + s of hmask[l]).
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace anybit {

// Bytes of one 256-weight block, 0 when `t` is not a K-quant.
size_t kquant_block_bytes(DType t);

// Q4_K / Q5_K: the 8 six-bit scales and mins from the 12 packed bytes.
void decode_k4_scales(const uint8_t* s12, uint8_t sc[8], uint8_t mn[8]);
// Q3_K: the 16 six-bit scales from the 12 packed bytes, minus 32.
void decode_k3_scales(const uint8_t* s12, int8_t sc[16]);

// `n` (a multiple of 256) weights of one row to fp32.
void dequantize_kquant_row(DType t, const uint8_t* src, float* dst, int64_t n);

}  // namespace anybit
