// The in-memory form of an any-bit (2..8) group-quantized weight matrix: the
// contract between the quantizers / checkpoint reader (src/quant, src/formats)
// and the kernels (src/kernels). A WeightMatrix with dtype QBITS has
// `data` pointing at one of these.
//
// Backend-neutral layout (also the on-disk layout, docs/FORMAT.md):
//   codes   rows × row_code_bytes(): each row a little-endian bit stream of `cols`
//           unsigned codes of `bits` bits (code i occupies bits [i*bits, (i+1)*bits)).
//   scales  rows × (cols / group) fp32 (stored f16 or bf16 on disk, widened at load)
//   zeros   rows × (cols / group) fp32, asymmetric only; symmetric uses 2^(bits-1)
//   value(r, c) = scales[r][c/group] * (code(r, c) - zero(r, c/group))
//   input_scale  optional per-input-channel fp32 (AWQ): the kernel computes
//                y = (x / input_scale) · W^T, so the stored W already carries the scale.
// Each CPU/GPU backend repacks this at load into its own kernel layout (`packed`).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace anybit {

struct QuantizedWeight {
  int bits = 4;          // 2..8
  int group = 128;       // 32, 64 or 128; divides cols
  bool asymmetric = false;
  int act_bits = 0;      // 0 = fp32 activations; 8 = dynamic per-token int8 activations (W*A8)
  int64_t rows = 0, cols = 0;
  std::string quantizer;  // "rtn", "rtn-clip", "awq", ... (metadata only)

  std::vector<uint8_t> codes;
  std::vector<float> scales;
  std::vector<float> zeros;        // empty when symmetric
  std::vector<float> input_scale;  // empty when none

  // Kernel-specific repacked copy, created once by the backend that runs it.
  std::shared_ptr<void> packed;
  int packed_kind = 0;  // which kernel family built `packed` (0 = none yet)

  size_t row_code_bytes() const { return size_t((cols * bits + 7) / 8); }
  int64_t groups_per_row() const { return cols / group; }
  // Codes + f16 scales (+ f16 zeros), as stored on disk.
  double bits_per_weight() const { return double(bits) + (16.0 + (asymmetric ? 16.0 : 0.0)) / double(group); }

  uint32_t code(int64_t r, int64_t c) const {
    const uint8_t* row = codes.data() + size_t(r) * row_code_bytes();
    const int64_t bit = c * bits;
    uint32_t v = 0;
    for (int b = 0; b < bits; ++b) v |= uint32_t((row[(bit + b) >> 3] >> ((bit + b) & 7)) & 1) << b;
    return v;
  }
  float zero(int64_t r, int64_t g) const {
    return asymmetric ? zeros[size_t(r * groups_per_row() + g)] : float(1 << (bits - 1));
  }
  // Reference dequantisation of one row to fp32 (input_scale NOT applied).
  void dequantize_row(int64_t r, float* out) const {
    const int64_t G = groups_per_row();
    if (bits == 8 || bits == 4) {  // whole bytes / nibbles: no bit-by-bit assembly (embedding lookups)
      const uint8_t* row = codes.data() + size_t(r) * row_code_bytes();
      for (int64_t c = 0; c < cols; ++c) {
        const uint32_t q = bits == 8 ? row[c] : (row[c >> 1] >> ((c & 1) * 4)) & 15u;
        out[c] = scales[size_t(r * G + c / group)] * (float(q) - zero(r, c / group));
      }
      return;
    }
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t g = c / group;
      out[c] = scales[size_t(r * G + g)] * (float(code(r, c)) - zero(r, g));
    }
  }
};

}  // namespace anybit
