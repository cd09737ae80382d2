// Table-lookup (T-MAC style) kernels for 2..4-bit weights: layout, activation tables and
// the bit-exact scalar reference.
//
// Idea: write each code as bits, code = sum_p 2^p b_p, and centre them: code - z =
// sum_p 2^p (b_p - 1/2) + c_z with c_z = (2^bits - 1) / 2 - z. For 4 consecutive inputs
// x_0..3 (a "quad") the 16 possible values of sum_t (b_t - 1/2) x_t form a table; one
// byte shuffle then looks up, for 32 rows at once, the contribution of one bit plane
// of 4 weights. Cost is linear in the bit width, with no multiplies.
//
// Tables are quantized to int8 per weight group (scale ts_g = max |entry| / 127; the
// centred tables are odd, T[15 - i] = -T[i], so their range is half that of 0/1 tables).
// A table register holds the 4 tables of a 16-input "span" (64 bytes, table q at bytes
// 16q..16q+15) and vpermb picks the table from bits 4..5 of each index byte.
//
// Layout (LutPack): rows in blocks of 32 (zero padded). Per row block, per span,
// `bits` vectors of 64 bytes; in vector v, byte 2r + e (r = row, e = 0/1) holds in its
// low nibble the index for element e of lookup pair 2v and in its high nibble that of
// pair 2v + 1. A pair is two (quad, plane) lookups whose int8 results vpmaddubsw
// weights by (2^plane0, 2^plane1) and adds into one int16 per row (kPairs below); even
// pairs accumulate into one int16 register, odd pairs into another, ordered so that
// both stay below 32767 over a 128-input group. Then per row block and group: 32 scales,
// and (asymmetric) 32 zero points, f16 when exact, else fp32.
//
// Per group, with acc = the int16 sums widened to int32 and xq = sum over the group's
// quads of (T[15] - T[0]) (the integer image of sum x):
//   y += s_g * ((acc + c_z * xq) * ts_g)
// act_bits == 8 weights are not run by these kernels (their int8 activations cannot be
// tabulated in int8 exactly); the selector sends them to the int8 kernels.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/qbits_pack.h"

namespace anybit::qbits {

struct LutLookup {
  uint8_t quad, plane;
};
struct LutPair {
  LutLookup e[2];
};

// Pairs of one span, in layout order, for bits 2, 3, 4 (2 * bits pairs each).
inline constexpr LutPair kLutPairs2[4] = {{{{0, 0}, {0, 1}}}, {{{1, 0}, {1, 1}}}, {{{2, 0}, {2, 1}}},
                                          {{{3, 0}, {3, 1}}}};
inline constexpr LutPair kLutPairs3[6] = {{{{0, 0}, {0, 1}}}, {{{1, 0}, {1, 1}}}, {{{2, 0}, {2, 1}}},
                                          {{{3, 0}, {3, 1}}}, {{{0, 2}, {1, 2}}}, {{{2, 2}, {3, 2}}}};
inline constexpr LutPair kLutPairs4[8] = {{{{0, 0}, {0, 1}}}, {{{0, 2}, {0, 3}}}, {{{1, 2}, {1, 3}}},
                                          {{{1, 0}, {1, 1}}}, {{{2, 0}, {2, 1}}}, {{{2, 2}, {2, 3}}},
                                          {{{3, 2}, {3, 3}}}, {{{3, 0}, {3, 1}}}};
constexpr const LutPair* lut_pairs(int bits) {
  return bits == 2 ? kLutPairs2 : bits == 3 ? kLutPairs3 : kLutPairs4;
}

struct LutPack {
  int bits = 0, group = 0;
  bool asym = false;
  bool f32_meta = false;
  int64_t rows = 0, cols = 0;
  int64_t nrb = 0;         // row blocks of 32
  int64_t ngroups = 0;
  int64_t nspans = 0;      // cols / 16
  size_t span_bytes = 0;   // 64 * bits
  size_t code_bytes = 0;   // nspans * span_bytes
  size_t meta_bytes = 0;   // padded to 64
  size_t rb_stride = 0;
  AlignedBytes data;

  const uint8_t* block(int64_t rb) const { return data.data() + size_t(rb) * rb_stride; }
  const uint8_t* meta(int64_t rb, int64_t g) const {
    return block(rb) + code_bytes + size_t(g) * size_t(asym ? 2 : 1) * (f32_meta ? 128 : 64);
  }
};

std::unique_ptr<LutPack> build_lut_pack(const QuantizedWeight& w);

// Activation tables of m tokens: per token, nspans * 64 int8 entries, and per group the
// table scale ts and xq (see above, as float).
struct LutActs {
  int64_t m = 0, nspans = 0, ngroups = 0;
  int8_t* t = nullptr;
  float* ts = nullptr;
  float* xq = nullptr;
  const int8_t* tables(int64_t i) const { return t + i * nspans * 64; }
};
LutActs& lut_act_scratch(int64_t m, int64_t nspans, int64_t ngroups);

// Scalar table construction; the SIMD builders reproduce it exactly. Per quad, with
// h_t = 0.5 * x_t (x after input scaling) and s_t = bit t of i ? +1 : -1:
//   T[i] = ((s_0 h_0 + s_1 h_1) + s_2 h_2) + s_3 h_3        (fp32, in this order)
// per group: qmax = max |T[i]| over its quads, inv = qmax > 0 ? 127 / qmax : 0,
// ts = qmax / 127, entry = clamp(nearbyint(T[i] * inv), -127, 127), and
// xq = 2 * sum over its quads of entry[15] (T[0] = -T[15] exactly).
void build_lut_acts_scalar(const float* x, int64_t m, int64_t k, int group, const float* inv_input_scale,
                           LutActs& out);

// Bit-exact scalar reference of the LUT kernels.
void matmul_lut_ref(const QuantizedWeight& w, const float* x, int64_t m, float* y);

}  // namespace anybit::qbits
