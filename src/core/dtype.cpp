#include "core/dtype.h"

#include "core/error.h"
#include "core/kquants.h"

namespace anybit {

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::Q8_0: return "q8_0";
    case DType::Q4_0: return "q4_0";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
    case DType::QBITS: return "qbits";
    case DType::Q4_K: return "q4_k";
    case DType::Q5_K: return "q5_k";
    case DType::Q6_K: return "q6_k";
    case DType::Q2_K: return "q2_k";
    case DType::Q3_K: return "q3_k";
    case DType::I8: return "i8";
  }
  return "?";
}

int64_t dtype_block_size(DType t) {
  if (t == DType::Q8_0 || t == DType::Q4_0) return 32;
  if (kquant_block_bytes(t)) return 256;
  return 1;
}

size_t dtype_row_bytes(DType t, int64_t n) {
  switch (t) {
    case DType::F32: case DType::I32: return size_t(n) * 4;
    case DType::I64: return size_t(n) * 8;
    case DType::F16: case DType::BF16: return size_t(n) * 2;
    case DType::I8: return size_t(n);
    case DType::Q8_0: return size_t(n / 32) * 34;
    case DType::Q4_0: return size_t(n / 32) * 18;
    case DType::QBITS: return 0;  // not a plain row format: see quant/quantized_weight.h
    case DType::Q4_K: case DType::Q5_K: case DType::Q6_K: case DType::Q2_K: case DType::Q3_K:
      return size_t(n / 256) * kquant_block_bytes(t);
  }
  return 0;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) { mant <<= 1; --exp; }
      mant &= 0x3ff;
      u = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000;
  const int32_t exp = int32_t((u >> 23) & 0xff) - 127 + 15;
  uint32_t mant = u & 0x7fffff;
  if (((u >> 23) & 0xff) == 0xff) return uint16_t(sign | 0x7c00 | (mant ? 0x200 : 0));
  if (exp >= 31) return uint16_t(sign | 0x7c00);
  if (exp <= 0) {
    if (exp < -10) return uint16_t(sign);
    mant |= 0x800000;
    const int shift = 14 - exp;
    uint32_t half = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) ++half;
    return uint16_t(sign | half);
  }
  uint32_t half = sign | (uint32_t(exp) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) ++half;  // may carry into exponent: correct
  return uint16_t(half);
}

void dequantize_row(DType t, const void* src, float* dst, int64_t n) {
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, size_t(n) * 4);
      return;
    case DType::F16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::BF16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::Q8_0: {
      auto* b = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; i += 32, b += 34) {
        uint16_t d16;
        std::memcpy(&d16, b, 2);
        const float d = f16_to_f32(d16);
        auto* q = reinterpret_cast<const int8_t*>(b + 2);
        for (int j = 0; j < 32; ++j) dst[i + j] = d * float(q[j]);
      }
      return;
    }
    case DType::Q4_0: {
      auto* b = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; i += 32, b += 18) {
        uint16_t d16;
        std::memcpy(&d16, b, 2);
        const float d = f16_to_f32(d16);
        for (int j = 0; j < 16; ++j) {
          dst[i + j] = d * float(int(b[2 + j] & 0x0f) - 8);
          dst[i + j + 16] = d * float(int(b[2 + j] >> 4) - 8);
        }
      }
      return;
    }
    case DType::Q4_K: case DType::Q5_K: case DType::Q6_K: case DType::Q2_K: case DType::Q3_K:
      dequantize_kquant_row(t, static_cast<const uint8_t*>(src), dst, n);  // core/kquants.cpp
      return;
    default:
      fail("cannot convert dtype {} to f32", dtype_name(t));
  }
}

}  // namespace anybit
