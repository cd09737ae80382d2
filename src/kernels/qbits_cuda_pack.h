// GPU layout of an any-bit weight (QuantizedWeight, quant/quantized_weight.h), built on
// the host. Plain C++ (no CUDA headers) so the layout and its tests build without CUDA;
// kernels/matmul_qbits_cuda.cu uploads and reads it.
//
// Bit planes. A code of `bits` bits is split into planes of width 4, 2 and 1, low bits
// first: 8 = 4+4, 7 = 4+2+1, 6 = 4+2, 5 = 4+1, 4 = 4, 3 = 2+1, 2 = 2. Plane p holds
// bits [shift_p, shift_p + width_p) of every code, so code = sum_p plane_p << shift_p.
// Every plane is a power-of-two width, so no field ever straddles a byte or a word.
//
// Chunks. Each plane row holds `cols` fields of `width` bits in 32-column chunks of
// 4*width bytes (16, 8 or 4), row-major: chunk q of row r at byte (r * cols/32 + q) *
// 4*width. One GPU lane loads a chunk of a plane with one vector load, and lanes with
// consecutive chunk indices read consecutive addresses. A chunk never crosses a
// quantization group (group % 32 == 0), so one scale and one zero serve a lane's chunk.
//
// Pair order inside a chunk. The kernel computes in f16x2 (A16): it turns two codes into
// one half2 with one LOP3 (fields OR-ed under the exponent of 1024) and one HFMA2, and
// multiplies by the half2 of activations (x[2p], x[2p+1]). So chunk columns 2p and 2p+1
// sit at the same bit position of the low and high 16-bit halves of one 32-bit word:
// word j of the chunk holds the pairs p = j*16/width + k (k < 16/width); column 2p's field
// at bits [k*width, (k+1)*width), column 2p+1's at bits [16 + k*width, 16 + (k+1)*width).
// plane_bit() below is the one definition of that order (packer, unpacker, tests).
//
// Metadata: scales [rows][cols/group] as f16 when every scale converts to f16 and back
// unchanged (checkpoints store them as f16), else fp32; zeros (asymmetric only) the
// same way, independently; 1/input_scale as fp32 [cols] when the weight has one.
#pragma once
#include <cstdint>
#include <vector>

#include "quant/quantized_weight.h"

namespace anybit {

struct QbitsGpuPack {
  int bits = 0, group = 0;
  int act_bits = 0;  // 0 or 8 (int8 activations per token: the W*A8 kernel)
  bool asymmetric = false;
  int64_t rows = 0, cols = 0;
  int n_planes = 0;
  int width[3] = {0, 0, 0};  // 4, 2 or 1
  int shift[3] = {0, 0, 0};  // first code bit the plane holds
  std::vector<uint8_t> planes[3];  // rows * cols * width / 8 bytes each

  bool scales_f16 = false;
  std::vector<uint16_t> scales_h;  // when scales_f16
  std::vector<float> scales_f;     // otherwise
  bool zeros_f16 = false;          // asymmetric only
  std::vector<uint16_t> zeros_h;
  std::vector<float> zeros_f;
  std::vector<float> inv_input_scale;  // empty when the weight has no input_scale

  int64_t chunks_per_row() const { return cols / 32; }
  int64_t groups_per_row() const { return cols / group; }
  size_t plane_bytes(int p) const { return size_t(rows) * size_t(cols) * size_t(width[p]) / 8; }
  // Everything the GEMV reads per call except x: codes + scales + zeros.
  size_t weight_bytes() const;
  // Scale / zero of group g of row r, widened to fp32 (tests).
  float scale(int64_t r, int64_t g) const;
  float zero(int64_t r, int64_t g) const;  // 2^(bits-1) when symmetric
};

// Bit index, inside plane buffer of the given width, of the field of (r, c).
int64_t plane_bit(int width, int64_t cols, int64_t r, int64_t c);

// The plane split of a bit width (2..8): fills n_planes / width / shift.
void qbits_plane_split(int bits, int& n_planes, int* width, int* shift);

// Validates `w` and builds its GPU layout. Throws anybit::Error on an inconsistent weight
// (bit width, group, sizes, non-finite metadata, act_bits other than 0 or 8).
QbitsGpuPack pack_qbits_for_gpu(const QuantizedWeight& w);

// Scalar reference: the code of (r, c) reassembled from the planes.
uint32_t unpack_code(const QbitsGpuPack& p, int64_t r, int64_t c);

}  // namespace anybit
