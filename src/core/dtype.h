// Element types of stored tensors and their conversions to fp32.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace anybit {

enum class DType : uint8_t {
  F32,
  F16,
  BF16,
  Q8_0,  // GGUF block format: 32 int8 + one f16 scale (34 bytes / 32 weights)
  Q4_0,  // GGUF block format: 32 nibbles + one f16 scale (18 bytes / 32 weights)
  I32,
  I64,
  QBITS,  // anybit's any-bit (2..8) group-quantized matrix: data points at a QuantizedWeight
          // (src/quant/quantized_weight.h), never at raw bytes
};

std::string_view dtype_name(DType t);

// Bytes needed for `n` elements along a row (block formats need n % block == 0).
size_t dtype_row_bytes(DType t, int64_t n);
int64_t dtype_block_size(DType t);  // 1 for plain types, 32 for Q8_0/Q4_0

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round-to-nearest-even, NaN kept quiet.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Converts `n` elements of a plain or block type to fp32.
void dequantize_row(DType t, const void* src, float* dst, int64_t n);

}  // namespace anybit
