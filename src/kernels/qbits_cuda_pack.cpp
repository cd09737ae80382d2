// Host-side packing of QBITS weights for the CUDA GEMV (layout: qbits_cuda_pack.h).
#include "kernels/qbits_cuda_pack.h"

#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"

namespace anybit {
namespace {

// f16 holds v exactly (bit-for-bit after the round trip, so -0 and subnormals count too).
bool exact_in_f16(float v) {
  const float back = f16_to_f32(f32_to_f16(v));
  return std::memcmp(&back, &v, 4) == 0;
}

void pack_meta(const std::vector<float>& src, bool& as_f16, std::vector<uint16_t>& h, std::vector<float>& f) {
  as_f16 = true;
  for (float v : src)
    if (!exact_in_f16(v)) {
      as_f16 = false;
      break;
    }
  h.clear(), f.clear();
  if (as_f16) {
    h.resize(src.size());
    for (size_t i = 0; i < src.size(); ++i) h[i] = f32_to_f16(src[i]);
  } else {
    f = src;
  }
}

void validate(const QuantizedWeight& w) {
  if (w.bits < 2 || w.bits > 8) fail("QBITS (CUDA): bit width {} is not supported (2..8)", w.bits);
  if (w.act_bits != 0 && w.act_bits != 8) fail("QBITS (CUDA): act_bits {} is not 0 or 8", w.act_bits);
  if (w.rows <= 0 || w.cols <= 0) fail("QBITS (CUDA): empty weight ({} x {})", w.rows, w.cols);
  if (w.cols % 32 != 0)
    fail("QBITS (CUDA): cols = {} is not a multiple of 32 (the GPU layout works in 32-column chunks)", w.cols);
  if (w.group <= 0 || w.group % 32 != 0 || w.cols % w.group != 0)
    fail("QBITS (CUDA): group {} must be a multiple of 32 that divides cols = {}", w.group, w.cols);
  const size_t code_bytes = size_t(w.rows) * w.row_code_bytes();
  if (w.codes.size() != code_bytes)
    fail("QBITS (CUDA): codes hold {} bytes, {} x {} at {} bits needs {}", w.codes.size(), w.rows, w.cols, w.bits,
         code_bytes);
  const size_t ng = size_t(w.rows) * size_t(w.groups_per_row());
  if (w.scales.size() != ng) fail("QBITS (CUDA): {} scales, expected {}", w.scales.size(), ng);
  if (w.asymmetric && w.zeros.size() != ng) fail("QBITS (CUDA): {} zeros, expected {}", w.zeros.size(), ng);
  if (!w.asymmetric && !w.zeros.empty()) fail("QBITS (CUDA): a symmetric weight carries {} zeros", w.zeros.size());
  if (!w.input_scale.empty() && w.input_scale.size() != size_t(w.cols))
    fail("QBITS (CUDA): input_scale has {} entries, expected cols = {}", w.input_scale.size(), w.cols);
  for (float v : w.scales)
    if (!std::isfinite(v)) fail("QBITS (CUDA): non-finite scale");
  for (float v : w.zeros)
    if (!std::isfinite(v)) fail("QBITS (CUDA): non-finite zero point");
  for (float v : w.input_scale)
    if (!std::isfinite(v) || v == 0.0f || !std::isfinite(1.0f / v))
      fail("QBITS (CUDA): input_scale entry {} has no finite reciprocal", v);
}

}  // namespace

int64_t plane_bit(int width, int64_t cols, int64_t r, int64_t c) {
  const int64_t chunk = r * (cols / 32) + c / 32;
  const int e = int(c % 32), pair = e / 2, per_word = 16 / width;
  return chunk * 32 * width + (pair / per_word) * 32 + (e % 2) * 16 + (pair % per_word) * width;
}

void qbits_plane_split(int bits, int& n_planes, int* width, int* shift) {
  if (bits < 2 || bits > 8) fail("QBITS (CUDA): bit width {} is not supported (2..8)", bits);
  // Widest planes first (one 16-byte load per chunk carries the most bits).
  static const int kWidths[9][3] = {{0}, {0}, {2}, {2, 1}, {4}, {4, 1}, {4, 2}, {4, 2, 1}, {4, 4}};
  n_planes = 0;
  int at = 0;
  for (int q = 0; q < 3 && kWidths[bits][q] != 0; ++q) {
    width[q] = kWidths[bits][q], shift[q] = at;
    at += width[q], ++n_planes;
  }
}

size_t QbitsGpuPack::weight_bytes() const {
  size_t n = 0;
  for (int p = 0; p < n_planes; ++p) n += planes[p].size();
  n += scales_f16 ? scales_h.size() * 2 : scales_f.size() * 4;
  if (asymmetric) n += zeros_f16 ? zeros_h.size() * 2 : zeros_f.size() * 4;
  return n;
}

float QbitsGpuPack::scale(int64_t r, int64_t g) const {
  const size_t i = size_t(r * groups_per_row() + g);
  return scales_f16 ? f16_to_f32(scales_h[i]) : scales_f[i];
}

float QbitsGpuPack::zero(int64_t r, int64_t g) const {
  if (!asymmetric) return float(1 << (bits - 1));
  const size_t i = size_t(r * groups_per_row() + g);
  return zeros_f16 ? f16_to_f32(zeros_h[i]) : zeros_f[i];
}

QbitsGpuPack pack_qbits_for_gpu(const QuantizedWeight& w) {
  validate(w);
  QbitsGpuPack p;
  p.bits = w.bits, p.group = w.group, p.asymmetric = w.asymmetric, p.rows = w.rows, p.cols = w.cols;
  p.act_bits = w.act_bits;
  qbits_plane_split(w.bits, p.n_planes, p.width, p.shift);
  for (int q = 0; q < p.n_planes; ++q) p.planes[q].assign(p.plane_bytes(q), 0);

  const size_t rcb = w.row_code_bytes();
  // Rows own disjoint plane bytes (plane_bit), so they pack in parallel.
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < w.rows; ++r) {
    const uint8_t* src = w.codes.data() + size_t(r) * rcb;
    for (int64_t c = 0; c < w.cols; ++c) {
      // A code spans at most two bytes (bits <= 8); the second may lie past the row.
      const int64_t bit = c * w.bits;
      const size_t byte = size_t(bit >> 3);
      uint32_t win = src[byte];
      if (byte + 1 < rcb) win |= uint32_t(src[byte + 1]) << 8;
      const uint32_t code = (win >> (bit & 7)) & ((1u << w.bits) - 1u);
      for (int q = 0; q < p.n_planes; ++q) {
        const uint32_t v = (code >> p.shift[q]) & ((1u << p.width[q]) - 1u);
        const int64_t pb = plane_bit(p.width[q], w.cols, r, c);
        p.planes[q][size_t(pb >> 3)] |= uint8_t(v << (pb & 7));
      }
    }
  }
  pack_meta(w.scales, p.scales_f16, p.scales_h, p.scales_f);
  if (w.asymmetric) pack_meta(w.zeros, p.zeros_f16, p.zeros_h, p.zeros_f);
  if (!w.input_scale.empty()) {
    p.inv_input_scale.resize(w.input_scale.size());
    for (size_t i = 0; i < w.input_scale.size(); ++i) p.inv_input_scale[i] = 1.0f / w.input_scale[i];
  }
  return p;
}

uint32_t unpack_code(const QbitsGpuPack& p, int64_t r, int64_t c) {
  if (r < 0 || r >= p.rows || c < 0 || c >= p.cols) fail("unpack_code: ({}, {}) outside {} x {}", r, c, p.rows, p.cols);
  uint32_t code = 0;
  for (int q = 0; q < p.n_planes; ++q) {
    const int64_t pb = plane_bit(p.width[q], p.cols, r, c);
    const uint32_t v = (p.planes[q][size_t(pb >> 3)] >> (pb & 7)) & ((1u << p.width[q]) - 1u);
    code |= v << p.shift[q];
  }
  return code;
}

}  // namespace anybit
