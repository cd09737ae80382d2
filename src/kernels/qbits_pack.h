// CPU kernel layouts of an any-bit weight (QuantizedWeight, quant/quantized_weight.h) and
// the per-call activation quantization they consume. Plain data and scalar code only:
// the ISA files (qbits_*_avx2.cpp / qbits_*_avx512.cpp) read these layouts.
//
// Two layouts exist, each built once per weight on first use (or eagerly by
// prepare_qbits) and kept in QuantizedWeight::packed:
//
// "int8" layout (VnniPack), read by the VNNI / AVX2 integer kernels. Rows are cut into
//   row blocks of 16 (the last one zero padded). For one row block and 4 consecutive
//   inputs k..k+3 (a "chunk"), the 16 x 4 codes form exactly one 64-byte vector whose
//   dword r holds row r's four codes: the operand of one vpdpbusd against the broadcast
//   dword of 4 int8 activations, giving 16 rows' partial dots with no horizontal sum.
//   Codes are split into bit planes so each plane packs whole chunks per vector:
//     4-bit plane: nibble h of vector v  = chunk 2v + h       (bits 4..7 of the code: none)
//     2-bit plane: bit pair p of vector v = chunk 4v + p
//     1-bit plane: bit p of the vector    = chunk p
//   bits 2 = [2], 3 = [2,1], 4 = [4], 5 = [4,1], 6 = [4,2], 7 = [4,2,1] (low plane first),
//   8 = plain bytes. A "unit" is 8 chunks (32 inputs): 64 * bits bytes, planes in the
//   order 4, 2, 1. A row block stores all its units (K / 32 of them) then its metadata:
//   per group, 16 scales then (asymmetric) 16 zero points, as f16 when every value
//   converts exactly (the on-disk precision), else as fp32.
//
// "lut" layout (LutPack), read by the table-lookup kernels; see qbits_lut.h.
#pragma once
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

#include "quant/quantized_weight.h"

namespace anybit::qbits {

// 64-byte aligned owning byte buffer.
class AlignedBytes {
 public:
  AlignedBytes() = default;
  explicit AlignedBytes(size_t n);
  ~AlignedBytes() { std::free(p_); }
  AlignedBytes(AlignedBytes&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
  AlignedBytes& operator=(AlignedBytes&& o) noexcept;
  AlignedBytes(const AlignedBytes&) = delete;
  AlignedBytes& operator=(const AlignedBytes&) = delete;
  uint8_t* data() { return p_; }
  const uint8_t* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  uint8_t* p_ = nullptr;
  size_t n_ = 0;
};

struct VnniPack {
  int bits = 0, group = 0;
  bool asym = false;
  bool f32_meta = false;     // scales / zeros stored as fp32 (else f16)
  int64_t rows = 0, cols = 0;
  int64_t nrb = 0;           // row blocks of 16
  int64_t ngroups = 0;       // groups per row
  size_t unit_bytes = 0;     // 64 * bits
  size_t code_bytes = 0;     // codes of one row block: (cols / 32) * unit_bytes
  size_t meta_bytes = 0;     // metadata of one row block, padded to 64
  size_t rb_stride = 0;      // code_bytes + meta_bytes
  AlignedBytes data;

  const uint8_t* block(int64_t rb) const { return data.data() + size_t(rb) * rb_stride; }
  // Metadata of group g of a row block: 16 scales, then 16 zeros when asym.
  const uint8_t* meta(int64_t rb, int64_t g) const {
    return block(rb) + code_bytes + size_t(g) * size_t(asym ? 2 : 1) * (f32_meta ? 64 : 32);
  }
};

struct LutPack;  // qbits_lut.h

// What QuantizedWeight::packed points at when a CPU kernel packed it (packed_kind == kCpuPacks).
struct PackSet {
  std::once_flag int8_once, lut_once;
  std::unique_ptr<VnniPack> int8;
  std::shared_ptr<LutPack> lut;
  std::vector<float> inv_input_scale;  // 1 / input_scale, empty when none
};
constexpr int kCpuPacks = 0x43505531;  // "CPU1"

// The weight's PackSet, created on first call (thread-safe). Validates the weight and
// throws anybit::Error on an inconsistent one.
PackSet& pack_set(const QuantizedWeight& w);
const VnniPack& int8_pack(const QuantizedWeight& w);
const LutPack& lut_pack(const QuantizedWeight& w);

// All codes of row r (little-endian bit stream, quantized_weight.h) as integers.
void unpack_row_codes(const QuantizedWeight& w, int64_t r, uint32_t* out);

// Builds the int8 layout (scalar; exposed for tests).
std::unique_ptr<VnniPack> build_int8_pack(const QuantizedWeight& w);

// Activations quantized for the integer kernels: per row, `k` int8 values, and per
// weight group its scale xs and xs * (sum of the group's int8 values), so that
//   sum_c w(c) x(c) ~= sum_g s_g * (xs_g * dot_g(code, xq) - z_g * xsz_g).
// act_bits == 8 uses one scale per token (the W*A8 semantics); otherwise one per
// group, which keeps int8 rounding error local to each group.
struct ActQ {
  int64_t m = 0, k = 0, ngroups = 0;
  int8_t* q = nullptr;
  float* xs = nullptr;
  float* xsz = nullptr;
  const int8_t* row(int64_t i) const { return q + i * k; }
};

// Per-thread scratch for ActQ (grows, never shrinks).
ActQ& act_scratch(int64_t m, int64_t k, int64_t ngroups);

// Scalar activation quantization (reference for the SIMD ones): x (m x k) is first
// multiplied by inv_input_scale when given.
void quantize_acts_scalar(const float* x, int64_t m, int64_t k, int group, bool per_token,
                          const float* inv_input_scale, ActQ& out);

}  // namespace anybit::qbits
