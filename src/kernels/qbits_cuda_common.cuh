// Device-side pieces shared by the QBITS CUDA kernels (the GEMV in matmul_qbits_cuda.cu,
// the tensor-core GEMM in matmul_qbits_mma_cuda.cu): the plane split at compile time, the
// kernel parameters, and loading one row's 32-column chunk (layout: qbits_cuda_pack.h).
#pragma once
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_kernels.h"

namespace anybit::cuda::qdetail {

using namespace detail;

// The plane split of qbits_plane_split() at compile time (checked against it at upload).
__host__ __device__ constexpr int plane_count(int bits) { return bits == 2 || bits == 4 ? 1 : bits == 7 ? 3 : 2; }
__host__ __device__ constexpr int plane_width(int bits, int p) {
  return p == 0 ? (bits < 4 ? 2 : 4) : p == 1 ? (bits == 3 || bits == 5 ? 1 : bits == 8 ? 4 : 2) : 1;
}
__host__ __device__ constexpr int plane_shift(int bits, int p) {
  return p == 0 ? 0 : p == 1 ? plane_width(bits, 0) : plane_width(bits, 0) + plane_width(bits, 1);
}
__host__ __device__ constexpr int words_per_chunk(int bits) {
  int n = 0;
  for (int p = 0; p < plane_count(bits); ++p) n += plane_width(bits, p);
  return n;
}
// Where pair `pi`'s code is assembled inside each 16-bit half: bit P (the code then spans
// [P, P + bits), inside the 10 mantissa bits of 1024). Plane 0's field stays in place
// when it fits, else the word is shifted right by a byte or by what is needed.
__host__ __device__ constexpr int pair_pos0(int bits, int pi) { return plane_width(bits, 0) * (pi % (16 / plane_width(bits, 0))); }
__host__ __device__ constexpr int code_pos(int bits, int pi) {
  return pair_pos0(bits, pi) + bits <= 10                               ? pair_pos0(bits, pi)
         : pair_pos0(bits, pi) >= 8 && pair_pos0(bits, pi) - 8 + bits <= 10 ? pair_pos0(bits, pi) - 8
                                                                        : 10 - bits;
}
// f16 bit patterns of 2^-P and of -2^(10-P) (both exact).
__host__ __device__ constexpr unsigned short h_pow2_neg(int P) { return (unsigned short)((15 - P) << 10); }
__host__ __device__ constexpr unsigned short h_neg_pow2(int e) { return (unsigned short)(0x8000 | ((15 + e) << 10)); }

struct QParams {
  const float* x;
  int64_t ldx;
  int m;
  int64_t K, N;
  int64_t nch;  // chunks per row (K / 32)
  const uint8_t* plane[3];
  const void* scales;
  const void* zeros;
  int scales_f16, zeros_f16, asym;
  float zero_sym;
  int G, cpg;     // groups per row, chunks per group
  int cpg_shift;  // log2(cpg) when cpg is a power of two, else -1 (the tensor-core GEMV)
  const float* inv_s;
  const float* norm_w;
  float eps;
  const float* bias;
  int accumulate, pair;
  float* y;
  int64_t ldy;
  int ks;          // warps per row group (split-K); > 1 means one row group per warp, no loop
  int64_t groups;  // row groups of kR rows
  int spread;      // GEMV: row-group slots interleaved over blocks (see qbits_gemv_kernel)
};

__device__ __forceinline__ uint2 load_stream8(const void* p) {
  uint2 r;
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
  return r;
}
__device__ __forceinline__ uint32_t load_stream4(const void* p) {
  uint32_t r;
  asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(r) : "l"(p));
  return r;
}

// Scale or zero point i of a weight's metadata array (f16 bits or fp32).
__device__ __forceinline__ float group_meta(const void* base, int f16, int64_t i) {
  return f16 ? f16_bits(__ldg(static_cast<const unsigned short*>(base) + i)) : __ldg(static_cast<const float*>(base) + i);
}

// One row's chunk: all planes' words, plus its scale and zero point.
template <int BITS>
struct Chunk {
  uint32_t w[words_per_chunk(BITS)];
  float s, z;
};

// All planes' words of chunk rc = row * nch + q.
template <int BITS>
__device__ __forceinline__ void load_planes(const QParams& p, int64_t rc, Chunk<BITS>& c) {
  int o = 0;
#pragma unroll
  for (int pl = 0; pl < plane_count(BITS); ++pl) {
    const int W = plane_width(BITS, pl);
    const uint8_t* a = p.plane[pl] + rc * (4 * W);
    if (W == 4) {
      const uint4 r = load_stream(a);
      c.w[o] = r.x, c.w[o + 1] = r.y, c.w[o + 2] = r.z, c.w[o + 3] = r.w;
    } else if (W == 2) {
      const uint2 r = load_stream8(a);
      c.w[o] = r.x, c.w[o + 1] = r.y;
    } else {
      c.w[o] = load_stream4(a);
    }
    o += W;
  }
}

template <int BITS>
__device__ __forceinline__ void load_chunk(const QParams& p, int64_t row, int64_t q, Chunk<BITS>& c) {
  load_planes<BITS>(p, row * p.nch + q, c);
  // By row and chunk, with a division: the dequantizer and mma_qbits load a chunk per row
  // this way. The two GEMVs keep 32-bit cursors advanced by additions instead (the SIMT
  // GEMV's per-row 64-bit indices and divisions were 190 of its 510 instructions per step).
  const int64_t gi = row * p.G + q / p.cpg;
  c.s = group_meta(p.scales, p.scales_f16, gi);
  c.z = p.asym ? group_meta(p.zeros, p.zeros_f16, gi) : p.zero_sym;
}

template <int D>
__device__ __forceinline__ uint32_t shift_by(uint32_t v) {
  if constexpr (D > 0) return v >> D;
  else if constexpr (D < 0) return v << (-D);
  else return v;
}

// (a & mask) | c in one LOP3. Written out because with two immediates (mask and the
// exponent bits of 1024) the compiler emits an AND and an OR: an H100 profile of the
// tensor-core GEMV showed 65 LOP3 per 64 weights where 32 do.
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t mask, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(mask), "r"(c));
  return d;
}

// Pair pi of the chunk as the half2 bits (1024 + q_lo * 2^P, 1024 + q_hi * 2^P).
template <int BITS, int PI>
__device__ __forceinline__ uint32_t pair_bits(const uint32_t* w) {
  constexpr int P = code_pos(BITS, PI);
  uint32_t v;
  // Unrolled by hand over the (at most three) planes: every shift and mask is a constant.
  {
    constexpr int W = plane_width(BITS, 0);
    constexpr int per = 16 / W, pos = W * (PI % per);
    constexpr uint32_t mask = ((1u << W) - 1u) << P;
    v = and_or(shift_by<pos - P>(w[PI / per]), mask | mask << 16, 0x64006400u);
  }
  if constexpr (plane_count(BITS) > 1) {
    constexpr int W = plane_width(BITS, 1), at = P + plane_shift(BITS, 1);
    constexpr int per = 16 / W, pos = W * (PI % per);
    constexpr uint32_t mask = ((1u << W) - 1u) << at;
    v = and_or(shift_by<pos - at>(w[plane_width(BITS, 0) + PI / per]), mask | mask << 16, v);
  }
  if constexpr (plane_count(BITS) > 2) {
    constexpr int W = plane_width(BITS, 2), at = P + plane_shift(BITS, 2);
    constexpr int per = 16 / W, pos = W * (PI % per);
    constexpr uint32_t mask = ((1u << W) - 1u) << at;
    v = and_or(shift_by<pos - at>(w[plane_width(BITS, 0) + plane_width(BITS, 1) + PI / per]), mask | mask << 16, v);
  }
  return v;
}

__device__ __forceinline__ __half2 as_h2(uint32_t v) { return *reinterpret_cast<__half2*>(&v); }
__device__ __forceinline__ __half2 h2_const(unsigned short b) {
  const __half h = __ushort_as_half(b);
  return __halves2half2(h, h);
}

__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// op(x)[i][c] * 1/input_scale, RMSNorm's 1/rms left out (applied to the result).
template <InputOp OP>
__device__ __forceinline__ float2 op_x2(const QParams& p, int i, int c, float2& raw) {
  const float* xr = p.x + i * p.ldx;
  float2 v = *reinterpret_cast<const float2*>(xr + c);
  raw = v;
  if constexpr (OP == InputOp::RmsNorm) {
    const float2 g = *reinterpret_cast<const float2*>(p.norm_w + c);
    v.x *= g.x, v.y *= g.y;
  } else if constexpr (OP == InputOp::SiluMul) {
    const float2 u = *reinterpret_cast<const float2*>(xr + p.K + c);
    v.x = silu(v.x) * u.x, v.y = silu(v.y) * u.y;
  }
  if (p.inv_s) {
    const float2 s = *reinterpret_cast<const float2*>(p.inv_s + c);
    v.x *= s.x, v.y *= s.y;
  }
  return v;
}

// load_chunk by precomputed indices: chunk rc = row * nch + q, group gi = row * G + q / cpg
// (the tensor-core GEMV advances them by additions; 32 bits suffice for one matrix).
template <int BITS>
__device__ __forceinline__ void load_chunk_idx(const QParams& p, uint32_t rc, uint32_t gi, Chunk<BITS>& c) {
  load_planes<BITS>(p, int64_t(rc), c);
  c.s = group_meta(p.scales, p.scales_f16, gi);
  c.z = p.asym ? group_meta(p.zeros, p.zeros_f16, gi) : p.zero_sym;
}

// The tensor-core GEMV (matmul_qbits_gemv_tc_cuda.cu): the most x rows one launch takes at
// this K (0: x does not fit in shared memory), and one launch for a.m <= that many rows.
int gemv_tc_max_rows(int64_t K);
void gemv_qbits_tc(const LinearArgs& a, const QbitsDeviceWeight& w, cudaStream_t s);

// The weight's part of QParams (matmul_qbits_cuda.cu), and the argument checks every
// QBITS kernel entry point makes.
QParams weight_params(const QbitsDeviceWeight& w);
// Calls f(std::integral_constant<int, B>{}) for bit width B in 2..8 (others map to 8; the
// callers have checked the width): the one switch from a weight's run-time width to the
// kernels' compile-time one.
template <class F>
void with_bits(int bits, F&& f) {
  switch (bits) {
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    default: f(std::integral_constant<int, 8>{}); break;
  }
}

// weight_params plus the call's x, op inputs and y (the two GEMVs).
QParams gemv_params(const LinearArgs& a, const QbitsDeviceWeight& w);
void check_weight(const QbitsDeviceWeight& w);
// The fp-activation (A16) kernels refuse act_bits 8 weights, naming the entry point.
void check_a16(const QbitsDeviceWeight& w, const char* what);

}  // namespace anybit::cuda::qdetail
