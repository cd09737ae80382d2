#include "quant/gguf_qbits.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/kquants.h"
#include "quant/group_quant.h"

namespace anybit::quant {
namespace {

float f16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

int gguf_bits(DType t) { return t == DType::Q8_0 ? 8 : t == DType::Q5_K ? 5 : 4; }

// Scale s and zero z of group g of one row: value = s * (code - z).
void group_params(DType t, const uint8_t* row, int64_t g, float& s, float& z) {
  switch (t) {
    case DType::Q8_0:
      s = f16_at(row + g * 34), z = 128.0f;  // value = d * q, q = code - 128
      return;
    case DType::Q4_0:
      s = f16_at(row + g * 18), z = 8.0f;  // value = d * (q - 8)
      return;
    default: {  // Q4_K / Q5_K: value = d * sc[j] * q - dmin * mn[j] in sub-block j of 32
      const uint8_t* b = row + (g / 8) * int64_t(kquant_block_bytes(t));
      uint8_t sc[8], mn[8];
      decode_k4_scales(b + 4, sc, mn);
      const float d = f16_at(b), dmin = f16_at(b + 2);
      const float scale = d * float(sc[g % 8]), offset = dmin * float(mn[g % 8]);
      if (scale != 0.0f) {
        s = scale, z = offset / scale;
      } else {  // every value of the group is -offset: code 0 with s = offset, z = 1
        s = offset != 0.0f ? offset : 1.0f, z = offset != 0.0f ? 1.0f : 0.0f;
      }
      return;
    }
  }
}

}  // namespace

bool gguf_blocks_map_exactly(DType t) {
  return t == DType::Q8_0 || t == DType::Q4_0 || t == DType::Q4_K || t == DType::Q5_K;
}

QuantizedWeight qbits_from_gguf_blocks(DType t, const void* data, int64_t rows, int64_t cols) {
  const bool gguf = t == DType::Q8_0 || t == DType::Q4_0 || kquant_block_bytes(t) > 0;
  if (!gguf) fail("{} is not a GGUF block format", dtype_name(t));
  if (rows <= 0 || cols <= 0 || cols % dtype_block_size(t) != 0)
    fail("a {} x {} matrix is not whole {} blocks of {}", rows, cols, dtype_name(t), dtype_block_size(t));
  const auto* src = static_cast<const uint8_t*>(data);
  const size_t rb = dtype_row_bytes(t, cols);
  if (!gguf_blocks_map_exactly(t)) {
    std::vector<float> w(size_t(rows * cols));
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) dequantize_row(t, src + size_t(r) * rb, w.data() + r * cols, cols);
    MatrixOptions o;
    o.bits = 8, o.group = 32, o.asym = false, o.meta = DType::F16, o.search = false;
    QuantizedWeight q = quantize_rtn(w.data(), rows, cols, o, nullptr);
    q.quantizer = "from-" + std::string(dtype_name(t));
    return q;
  }

  QuantizedWeight q;
  q.bits = gguf_bits(t), q.group = 32, q.asymmetric = t == DType::Q4_K || t == DType::Q5_K;
  q.rows = rows, q.cols = cols, q.quantizer = "from-" + std::string(dtype_name(t));
  const int64_t G = cols / 32;
  const int top = (1 << q.bits) - 1;
  q.codes.assign(size_t(rows) * q.row_code_bytes(), 0);
  q.scales.resize(size_t(rows * G));
  if (q.asymmetric) q.zeros.resize(size_t(rows * G));
#pragma omp parallel
  {
    std::vector<float> v(static_cast<size_t>(cols));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* row = src + size_t(r) * rb;
      // The codes are read back from the values the CPU dequantizer computes (value / s + z
      // is the code up to rounding), so the block layouts are decoded in one place only.
      dequantize_row(t, row, v.data(), cols);
      uint8_t* out = q.codes.data() + size_t(r) * q.row_code_bytes();
      for (int64_t g = 0; g < G; ++g) {
        float s = 0.0f, z = 0.0f;
        group_params(t, row, g, s, z);
        q.scales[size_t(r * G + g)] = s;
        if (q.asymmetric) q.zeros[size_t(r * G + g)] = z;
        for (int64_t c = g * 32; c < g * 32 + 32; ++c) {
          const float code = s != 0.0f ? std::nearbyint(v[size_t(c)] / s + z) : z;
          // A non-finite scale (a corrupt block) is kept and refused by the backend's checks.
          const uint32_t u = std::isfinite(code) ? uint32_t(std::clamp(code, 0.0f, float(top))) : 0u;
          const int64_t bit = c * q.bits;
          for (int b = 0; b < q.bits; ++b)
            if ((u >> b) & 1u) out[(bit + b) >> 3] |= uint8_t(1u << ((bit + b) & 7));
        }
      }
    }
  }
  return q;
}

}  // namespace anybit::quant
