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
  // GGUF K-quant block formats (llama.cpp's ggml layouts), 256 weights per super-block:
  Q4_K,  // 144 bytes: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
  Q5_K,  // 176 bytes: as Q4_K plus 32 bytes of 5th bits
  Q6_K,  // 210 bytes: 128 bytes low nibbles, 64 bytes high 2 bits, 16 int8 scales, f16 d
  Q2_K,  // 84 bytes: 16 bytes of 4-bit scales/mins, 64 bytes of 2-bit codes, f16 d, f16 dmin
  Q3_K,  // 110 bytes: 32 bytes high-bit mask, 64 bytes of 2-bit codes, 12 bytes of 6-bit scales, f16 d
  I8,    // plain int8 (the GPU KV cache's 8-bit rows, each with its own fp32 scale)
};
// Number of DType values (sizes per-dtype tables such as KernelTable::matmul).
inline constexpr int kNumDTypes = int(DType::I8) + 1;

std::string_view dtype_name(DType t);

// Bytes needed for `n` elements along a row (block formats need n % block == 0).
size_t dtype_row_bytes(DType t, int64_t n);
int64_t dtype_block_size(DType t);  // 1 for plain types, 32 for Q8_0/Q4_0, 256 for K-quants

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
