// Device-side pieces shared by the QBITS CUDA kernels (the GEMV in matmul_qbits_cuda.cu,
// the tensor-core GEMM in matmul_qbits_mma_cuda.cu): the plane split at compile time, the
// kernel parameters, and loading one row's 32-column chunk (layout: qbits_cuda_pack.h).
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

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
  int G, cpg;  // groups per row, chunks per group
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

template <int BITS>
__device__ __forceinline__ void load_chunk(const QParams& p, int64_t row, int64_t q, Chunk<BITS>& c) {
  int o = 0;
#pragma unroll
  for (int pl = 0; pl < plane_count(BITS); ++pl) {
    const int W = plane_width(BITS, pl);
    const uint8_t* a = p.plane[pl] + (row * p.nch + q) * (4 * W);
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
  const int64_t gi = row * p.G + q / p.cpg;
  c.s = group_meta(p.scales, p.scales_f16, gi);
  c.z = p.asym ? group_meta(p.zeros, p.zeros_f16, gi) : p.zero_sym;
}

// The weight's part of QParams (matmul_qbits_cuda.cu), and the argument checks every
// QBITS kernel entry point makes.
QParams weight_params(const QbitsDeviceWeight& w);
void check_weight(const QbitsDeviceWeight& w);
// The fp-activation (A16) kernels refuse act_bits 8 weights, naming the entry point.
void check_a16(const QbitsDeviceWeight& w, const char* what);

}  // namespace anybit::cuda::qdetail
