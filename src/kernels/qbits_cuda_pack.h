// GPU layout of an any-bit weight (QuantizedWeight, quant/quantized_weight.h), built on
// the host. Plain C++ (no CUDA headers) so the layout and its tests build without CUDA;
// kernels/matmul_qbits_cuda.cu uploads and reads it.
//
// Bit planes. A code of `bits` bits is split into planes of width 4, 2 and 1, low bits
// first: 8 = 4+4, 7 = 4+2+1, 6 = 4+2, 5 = 4+1, 4 = 4, 3 = 2+1, 2 = 2. Plane p holds
// bits [shift_p, shift_p + width_p) of every code, so code = sum_p plane_p << shift_p.
// Every plane is a power-of-two width, so no field ever straddles a byte or a word.
//
// Chunks. Each plane row (rows x cols fields) is a little-endian bit stream of
// `width`-bit fields: field c at bits [c*width, (c+1)*width). Because cols % 32 == 0,
// the stream is a sequence of 32-element chunks of 4*width bytes (16, 8 or 4): one GPU
// lane loads its 32 elements of a plane with one vector load, and lanes with
// consecutive chunk indices read consecutive addresses. Plane p's buffer is
// rows * (cols/32) chunks, row-major: chunk q of row r at byte (r * cols/32 + q) * 4*width.
// A chunk never crosses a quantization group (group % 32 == 0), so one scale and one
// zero serve a lane's whole chunk.
//
// Why plain little-endian order inside a chunk: the kernel takes 8 elements at a time
// (one 32-bit word of the 4-bit plane, half a word of the 2-bit plane, one byte of the
// 1-bit plane) and each field sits at a bit position pos <= 14 of that word or of it
// shifted right by 16 / 8*j. OR-ing the masked field into the exponent pattern of
// 2^(23 - pos) yields the float 2^(23 - pos) + field exactly (the field lands on the
// mantissa's units place), so one LOP3 + one FADD turn a field into a float: no
// integer-to-float conversion and no per-element shift.
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

// The plane split of a bit width (2..8): fills n_planes / width / shift.
void qbits_plane_split(int bits, int& n_planes, int* width, int* shift);

// Validates `w` and builds its GPU layout. Throws anybit::Error on an inconsistent weight
// (bit width, group, sizes, non-finite metadata) and on act_bits != 0 (int8 activations
// are CPU-only).
QbitsGpuPack pack_qbits_for_gpu(const QuantizedWeight& w);

// Scalar reference: the code of (r, c) reassembled from the planes.
uint32_t unpack_code(const QbitsGpuPack& p, int64_t r, int64_t c);

}  // namespace anybit
