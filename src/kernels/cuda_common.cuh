// Device helpers shared by the CUDA kernels: dtype widening and 16-byte vector loads.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "kernels/cuda_kernels.h"

namespace anybit::cuda::detail {

__device__ __forceinline__ float bf16_bits(uint32_t h) { return __uint_as_float(h << 16); }
__device__ __forceinline__ float f16_bits(uint32_t h) { return __half2float(__ushort_as_half((unsigned short)h)); }

// Per weight dtype: elements per 16-byte vector and how to widen them.
template <DType D>
struct Elt;
template <>
struct Elt<DType::F32> {
  static constexpr int kVec = 4;
  static constexpr int kBytes = 4;
  __device__ static float at(const void* p, int64_t i) { return static_cast<const float*>(p)[i]; }
  __device__ static void store(void* p, int64_t i, float v) { static_cast<float*>(p)[i] = v; }
  __device__ static void widen(const uint4& r, float* o) {
    o[0] = __uint_as_float(r.x), o[1] = __uint_as_float(r.y), o[2] = __uint_as_float(r.z), o[3] = __uint_as_float(r.w);
  }
};
template <>
struct Elt<DType::BF16> {
  static constexpr int kVec = 8;
  static constexpr int kBytes = 2;
  __device__ static float at(const void* p, int64_t i) { return bf16_bits(static_cast<const uint16_t*>(p)[i]); }
  __device__ static void store(void* p, int64_t i, float v) { static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); }
  __device__ static void widen(const uint4& r, float* o) {
    const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      o[2 * i] = __uint_as_float(w[i] << 16);
      o[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
};
template <>
struct Elt<DType::F16> {
  static constexpr int kVec = 8;
  static constexpr int kBytes = 2;
  __device__ static float at(const void* p, int64_t i) { return f16_bits(static_cast<const uint16_t*>(p)[i]); }
  __device__ static void store(void* p, int64_t i, float v) { static_cast<__half*>(p)[i] = __float2half_rn(v); }
  __device__ static void widen(const uint4& r, float* o) {
    const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
      o[2 * i] = f.x;
      o[2 * i + 1] = f.y;
    }
  }
};

// One cached K or V row (head_dim values of one position and kv head), widened to fp32.
template <DType D>
struct KvRow {
  const unsigned char* p;
  float scale = 1.0f;
  // head_off: KVLayout::head_offset of the row's block, layer, K|V and kv head; slot: its row.
  __device__ KvRow(const KVLayout& c, int64_t head_off, int64_t slot) {
    const unsigned char* h = static_cast<const unsigned char*>(c.base) + head_off;
    p = h + slot * c.row_bytes();
    if constexpr (D == DType::I8) scale = reinterpret_cast<const float*>(h + c.block_size * c.row_bytes())[slot];
  }
  __device__ float operator[](int64_t d) const {
    if constexpr (D == DType::I8) return float(reinterpret_cast<const int8_t*>(p)[d]) * scale;
    else return Elt<D>::at(p, d);
  }
};

// Weights are read once per step and do not fit in L2: keep them out of L1.
__device__ __forceinline__ uint4 load_stream(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// RMSNorm's 1 / rms(x_i) for M rows from per-thread partial sums of squares `ss`, reduced
// over the block's WARPS warps through `s_part` / `s_inv` (shared); every thread gets all M.
template <int M, int WARPS>
__device__ __forceinline__ void block_rms_inv(float (&ss)[M], float (*s_part)[M], float* s_inv, int64_t K,
                                              float eps, float (&inv)[M]) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int i = 0; i < M; ++i) {
    ss[i] = warp_sum(ss[i]);
    if (lane == 0) s_part[warp][i] = ss[i];
  }
  __syncthreads();
  if (threadIdx.x < M) {
    float t = 0.0f;
    for (int w = 0; w < WARPS; ++w) t += s_part[w][threadIdx.x];
    s_inv[threadIdx.x] = 1.0f / sqrtf(t / float(K) + eps);
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < M; ++i) inv[i] = s_inv[i];
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum (or max) of v over a block of THREADS threads; every thread gets the result. May be
// called several times in a row (it synchronises before reusing its shared slots).
template <int THREADS>
__device__ __forceinline__ float block_reduce(float v, bool is_max) {
  __shared__ float part[THREADS / 32];
  __syncthreads();
  v = is_max ? warp_max(v) : warp_sum(v);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  float r = part[0];
#pragma unroll
  for (int w = 1; w < THREADS / 32; ++w) r = is_max ? fmaxf(r, part[w]) : r + part[w];
  return r;
}

// Stores one row of head_dim fp32 values as the cache's dtype; int8 rows get their own
// scale (max|x| / 127, codes rounded to nearest). One warp per row.
template <DType D>
__device__ void store_kv_row(const KVLayout& c, int64_t head_off, int64_t slot, const float* x, int lane) {
  unsigned char* h = static_cast<unsigned char*>(c.base) + head_off;
  unsigned char* row = h + slot * c.row_bytes();
  const int64_t hd = c.head_dim;
  if constexpr (D == DType::I8) {
    float mx = 0.0f;
    for (int64_t d = lane; d < hd; d += 32) mx = fmaxf(mx, fabsf(x[d]));
    mx = warp_max(mx);
    const float inv = mx > 0.0f ? 127.0f / mx : 0.0f;
    for (int64_t d = lane; d < hd; d += 32)
      reinterpret_cast<int8_t*>(row)[d] = int8_t(fminf(127.0f, fmaxf(-127.0f, rintf(x[d] * inv))));
    if (lane == 0) reinterpret_cast<float*>(h + c.block_size * c.row_bytes())[slot] = mx / 127.0f;
  } else {
    for (int64_t d = lane; d < hd; d += 32) Elt<D>::store(row, d, x[d]);
  }
}

// RoPE of one (i, i + half) pair with the angle's cos and sin already taken. The products and
// sums are spelled out (no contraction left to the compiler), so every kernel that rotates a
// pair gets the same bits: the fused decode kernel must write the cache rope_kv_write writes.
__device__ __forceinline__ void rope_rotate(float* o0, float* o1, float x0, float x1, float cs, float sn) {
  *o0 = __fmaf_rn(x0, cs, -__fmul_rn(x1, sn));
  *o1 = __fmaf_rn(x1, cs, __fmul_rn(x0, sn));
}

// RoPE of one pair: the angle is the fp32 product pos * inv_freq, as on the CPU, and its
// cos/sin are taken in double so both backends agree to the last bit there.
__device__ __forceinline__ void rope_pair(float* o0, float* o1, float x0, float x1, float pos, float inv_freq) {
  double sn, cs;
  sincos(double(pos * inv_freq), &sn, &cs);
  rope_rotate(o0, o1, x0, x1, float(cs), float(sn));
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

inline unsigned blocks_for(int64_t n, int64_t per) { return unsigned((n + per - 1) / per); }

// Multiprocessors of the current device (132 when the query fails), read once.
inline int sm_count() {
  static const int n = [] {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      return 132;
    return v;
  }();
  return n;
}

// Programmatic dependent launch (Hopper): a kernel launched with launch_pdl() may start
// while its predecessor is still running. Every kernel here therefore calls pdl_wait()
// before it touches memory an earlier kernel writes (the GEMV first prefetches weights,
// which nothing writes), and pdl_trigger() so that its own successor can start early.
// Both are no-ops for a kernel launched the ordinary way.
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }

inline bool pdl_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("ANYBIT_CUDA_PDL");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  return on;
}

template <typename... KArgs, typename... Args>
void launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t shm, cudaStream_t s, Args&&... args) {
  if (!pdl_enabled()) {
    kernel<<<grid, block, shm, s>>>(std::forward<Args>(args)...);
    return;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = shm;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  check(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...), "cudaLaunchKernelEx");
}

}  // namespace anybit::cuda::detail
