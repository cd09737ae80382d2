// Reference dequantization of the GGUF K-quant formats (layouts in kquants.h).
#include "core/kquants.h"

#include <cstring>

#include "core/error.h"

namespace anybit {

namespace {

float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

void q4k_block(const uint8_t* b, float* y, bool five) {
  const float d = half(b), dmin = half(b + 2);
  uint8_t sc[8], mn[8];
  decode_k4_scales(b + 4, sc, mn);
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + (five ? 48 : 16);
  for (int c = 0; c < 4; ++c)
    for (int h = 0; h < 2; ++h) {
      const int j = 2 * c + h;
      const float dl = d * float(sc[j]), ml = dmin * float(mn[j]);
      for (int l = 0; l < 32; ++l) {
        int q = (qs[32 * c + l] >> (4 * h)) & 15;
        if (five && (qh[l] >> j) & 1) q += 16;
        y[64 * c + 32 * h + l] = dl * float(q) - ml;
      }
    }
}

void q6k_block(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = half(b + 208);
  for (int n = 0; n < 2; ++n)
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < 32; ++l) {
        const int lo = (ql[64 * n + l + 32 * (k & 1)] >> (4 * (k >> 1))) & 15;
        const int hi = (qh[32 * n + l] >> (2 * k)) & 3;
        const int w = 128 * n + 32 * k + l;
        y[w] = d * float(sc[w / 16]) * float((lo | (hi << 4)) - 32);
      }
}

void q2k_block(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* qs = b + 16;
  const float d = half(b + 80), dmin = half(b + 82);
  for (int n = 0; n < 2; ++n)
    for (int s = 0; s < 4; ++s)
      for (int l = 0; l < 32; ++l) {
        const int w = 128 * n + 32 * s + l;
        const uint8_t sm = scales[w / 16];
        const int q = (qs[32 * n + l] >> (2 * s)) & 3;
        y[w] = d * float(sm & 15) * float(q) - dmin * float(sm >> 4);
      }
}

void q3k_block(const uint8_t* b, float* y) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  int8_t sc[16];
  decode_k3_scales(b + 96, sc);
  const float d = half(b + 108);
  for (int n = 0; n < 2; ++n)
    for (int s = 0; s < 4; ++s)
      for (int l = 0; l < 32; ++l) {
        const int w = 128 * n + 32 * s + l;
        const int q = ((qs[32 * n + l] >> (2 * s)) & 3) + 4 * ((hmask[l] >> (4 * n + s)) & 1);
        y[w] = d * float(sc[w / 16]) * float(q - 4);
      }
}

}  // namespace

size_t kquant_block_bytes(DType t) {
  switch (t) {
    case DType::Q4_K: return 144;
    case DType::Q5_K: return 176;
    case DType::Q6_K: return 210;
    case DType::Q2_K: return 84;
    case DType::Q3_K: return 110;
    default: return 0;
  }
}

void decode_k4_scales(const uint8_t* s, uint8_t sc[8], uint8_t mn[8]) {
  // Sub-blocks 0..3: low 6 bits of bytes 0..3 (scales) and 4..7 (mins). Sub-blocks
  // 4..7: low 4 bits in bytes 8..11 (scale low nibble, min high nibble), top 2 bits in
  // the top 2 bits of bytes 0..3 (scales) and 4..7 (mins).
  for (int j = 0; j < 4; ++j) {
    sc[j] = s[j] & 63;
    mn[j] = s[j + 4] & 63;
    sc[j + 4] = uint8_t((s[j + 8] & 15) | ((s[j] >> 6) << 4));
    mn[j + 4] = uint8_t((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
  }
}

void decode_k3_scales(const uint8_t* s, int8_t sc[16]) {
  // Low 4 bits: sub-block j < 8 in the low nibble of byte j, j >= 8 in the high nibble of
  // byte j - 8; top 2 bits: bits 2 * (j / 4) of byte 8 + j % 4.
  for (int j = 0; j < 16; ++j) {
    const int lo = j < 8 ? s[j] & 15 : s[j - 8] >> 4;
    const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    sc[j] = int8_t((lo | (hi << 4)) - 32);
  }
}

void dequantize_kquant_row(DType t, const uint8_t* src, float* dst, int64_t n) {
  const size_t bb = kquant_block_bytes(t);
  if (!bb || n % 256 != 0) fail("cannot dequantize {} weights of dtype {}", n, dtype_name(t));
  for (int64_t i = 0; i < n; i += 256, src += bb, dst += 256) {
    switch (t) {
      case DType::Q4_K: q4k_block(src, dst, false); break;
      case DType::Q5_K: q4k_block(src, dst, true); break;
      case DType::Q6_K: q6k_block(src, dst); break;
      case DType::Q2_K: q2k_block(src, dst); break;
      case DType::Q3_K: q3k_block(src, dst); break;
      default: break;
    }
  }
}

}  // namespace anybit
