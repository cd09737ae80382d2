// y = op(x) · W^T on the GPU, fp32 activations and accumulation, weights widened from
// their stored dtype on load.
//
// GEMV (decode, m <= 4): bound by reading W once. Each output row is owned by 1..8 warps
// (more warps per row, i.e. split-K inside the block, when N is too small to fill the
// chip); every lane keeps 4 independent 16-byte weight loads in flight. The input
// transform (RMSNorm or SiLU·mul) is applied while reading x, so decode needs no separate
// norm / activation launches; x is tiny and stays in L1/L2.
//
// GEMM (prefill): a plain 64x64 tiled SIMT kernel in fp32. It is correct and simple, not
// fast: tensor cores would need the activations rounded to bf16 (see docs/CUDA.md).
#include <algorithm>

#include "core/error.h"
#include "kernels/cuda_common.cuh"

namespace anybit::cuda {
namespace {

using namespace detail;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

struct GemvParams {
  const float* x;
  int64_t ldx;
  int m;
  int64_t K, N;
  const char* w;
  int64_t row_bytes;
  const float* norm_w;
  float eps;
  const float* bias;
  int accumulate;
  float* y;
  int64_t ldy;
  int wpr;  // warps per output row
};

template <InputOp OP, int V>
__device__ __forceinline__ void load_x(const GemvParams& p, int i, int64_t c, float inv, float* xv) {
  const float* xr = p.x + i * p.ldx + c;
#pragma unroll
  for (int v = 0; v < V; v += 4) {
    const float4 a = *reinterpret_cast<const float4*>(xr + v);
    float t[4] = {a.x, a.y, a.z, a.w};
    if constexpr (OP == InputOp::RmsNorm) {
      const float4 g = *reinterpret_cast<const float4*>(p.norm_w + c + v);
      t[0] = t[0] * inv * g.x, t[1] = t[1] * inv * g.y, t[2] = t[2] * inv * g.z, t[3] = t[3] * inv * g.w;
    } else if constexpr (OP == InputOp::SiluMul) {
      const float4 u = *reinterpret_cast<const float4*>(xr + p.K + v);
      t[0] = silu(t[0]) * u.x, t[1] = silu(t[1]) * u.y, t[2] = silu(t[2]) * u.z, t[3] = silu(t[3]) * u.w;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) xv[v + j] = t[j];
  }
}

template <DType D, int M, InputOp OP>
__global__ void __launch_bounds__(kThreads) gemv_kernel(const GemvParams p) {
  using E = Elt<D>;
  constexpr int V = E::kVec;
  constexpr int U = 4;  // vectors in flight per lane
  __shared__ float s_red[kWarps][M];
  __shared__ float s_inv[M];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  if constexpr (OP == InputOp::RmsNorm) {
    float ss[M];
#pragma unroll
    for (int i = 0; i < M; ++i) ss[i] = 0.0f;
    for (int64_t c = int64_t(threadIdx.x) * 4; c < p.K; c += kThreads * 4) {
#pragma unroll
      for (int i = 0; i < M; ++i)
        if (i < p.m) {
          const float4 v = *reinterpret_cast<const float4*>(p.x + i * p.ldx + c);
          ss[i] += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
    }
#pragma unroll
    for (int i = 0; i < M; ++i) {
      ss[i] = warp_sum(ss[i]);
      if (lane == 0) s_red[warp][i] = ss[i];
    }
    __syncthreads();
    if (threadIdx.x < M) {
      float t = 0.0f;
      for (int w = 0; w < kWarps; ++w) t += s_red[w][threadIdx.x];
      s_inv[threadIdx.x] = 1.0f / sqrtf(t / float(p.K) + p.eps);
    }
    __syncthreads();
  }

  const int rows_per_block = kWarps / p.wpr;
  const int64_t n = int64_t(blockIdx.x) * rows_per_block + warp / p.wpr;
  const int t_in_row = (warp % p.wpr) * 32 + lane;
  const int64_t step = int64_t(p.wpr) * 32 * V;
  float acc[M];
#pragma unroll
  for (int i = 0; i < M; ++i) acc[i] = 0.0f;
  float inv[M];
#pragma unroll
  for (int i = 0; i < M; ++i) {
    if constexpr (OP == InputOp::RmsNorm) inv[i] = s_inv[i];
    else inv[i] = 1.0f;
  }

  if (n < p.N) {
    const char* wrow = p.w + n * p.row_bytes;
    for (int64_t c0 = int64_t(t_in_row) * V; c0 < p.K; c0 += step * U) {
      uint4 raw[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t c = c0 + u * step;
        if (c < p.K) raw[u] = load_stream(wrow + c * E::kBytes);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t c = c0 + u * step;
        if (c < p.K) {
          float wv[V];
          E::widen(raw[u], wv);
#pragma unroll
          for (int i = 0; i < M; ++i)
            if (i < p.m) {
              float xv[V];
              load_x<OP, V>(p, i, c, inv[i], xv);
              float s = 0.0f;
#pragma unroll
              for (int v = 0; v < V; ++v) s = fmaf(xv[v], wv[v], s);
              acc[i] += s;
            }
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < M; ++i) acc[i] = warp_sum(acc[i]);
  if (p.wpr > 1) {
    __syncthreads();  // s_red may still be read by the RMSNorm prologue's last step
    if (lane == 0)
#pragma unroll
      for (int i = 0; i < M; ++i) s_red[warp][i] = acc[i];
    __syncthreads();
    if (lane == 0 && warp % p.wpr == 0)
#pragma unroll
      for (int i = 0; i < M; ++i) {
        float t = 0.0f;
        for (int w = warp; w < warp + p.wpr; ++w) t += s_red[w][i];
        acc[i] = t;
      }
  }
  if (n < p.N && lane == 0 && warp % p.wpr == 0) {
#pragma unroll
    for (int i = 0; i < M; ++i)
      if (i < p.m) {
        float v = acc[i];
        if (p.bias) v += p.bias[n];
        float* yp = p.y + i * p.ldy + n;
        if (p.accumulate) v += *yp;
        *yp = v;
      }
  }
}

template <DType D, int M>
void launch_gemv_m(const GemvParams& p, InputOp op, unsigned grid, cudaStream_t s) {
  switch (op) {
    case InputOp::None: gemv_kernel<D, M, InputOp::None><<<grid, kThreads, 0, s>>>(p); break;
    case InputOp::RmsNorm: gemv_kernel<D, M, InputOp::RmsNorm><<<grid, kThreads, 0, s>>>(p); break;
    case InputOp::SiluMul: gemv_kernel<D, M, InputOp::SiluMul><<<grid, kThreads, 0, s>>>(p); break;
  }
}

template <DType D>
void launch_gemv(const GemvParams& p, InputOp op, unsigned grid, cudaStream_t s) {
  if (p.m <= 1) launch_gemv_m<D, 1>(p, op, grid, s);
  else if (p.m <= 2) launch_gemv_m<D, 2>(p, op, grid, s);
  else launch_gemv_m<D, 4>(p, op, grid, s);
}

int sm_count() {
  static const int n = [] {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      return 132;
    return v;
  }();
  return n;
}

// ---- GEMM ------------------------------------------------------------------------
constexpr int BM = 64, BN = 64, BK = 16;

template <DType D>
__global__ void __launch_bounds__(kThreads) gemm_kernel(const GemvParams p) {
  using E = Elt<D>;
  __shared__ __align__(16) float As[BK][BM + 4];
  __shared__ __align__(16) float Bs[BK][BN + 4];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t m0 = int64_t(blockIdx.y) * BM, n0 = int64_t(blockIdx.x) * BN;
  const int lr = tid / 4, lc = (tid % 4) * 4;
  float acc[4][4] = {};
  const int64_t ar = m0 + lr, br = n0 + lr;
  const float* xrow = p.x + (ar < p.m ? ar : 0) * p.ldx;
  const char* wrow = p.w + (br < p.N ? br : 0) * p.row_bytes;
  for (int64_t k0 = 0; k0 < p.K; k0 += BK) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t c = k0 + lc + j;
      As[lc + j][lr] = (ar < p.m && c < p.K) ? xrow[c] : 0.0f;
      Bs[lc + j][lr] = (br < p.N && c < p.K) ? E::at(wrow, c) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      const float4 a = *reinterpret_cast<const float4*>(&As[k][ty * 4]);
      const float4 b = *reinterpret_cast<const float4*>(&Bs[k][tx * 4]);
      const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = m0 + ty * 4 + i;
    if (r >= p.m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t c = n0 + tx * 4 + j;
      if (c >= p.N) continue;
      float v = acc[i][j];
      if (p.bias) v += p.bias[c];
      float* yp = p.y + r * p.ldy + c;
      if (p.accumulate) v += *yp;
      *yp = v;
    }
  }
}

GemvParams params(const LinearArgs& a, const DeviceWeight& w) {
  GemvParams p{};
  p.x = a.x;
  p.ldx = a.ldx;
  p.m = int(a.m);
  p.K = w.cols;
  p.N = w.rows;
  p.w = static_cast<const char*>(w.data);
  p.row_bytes = int64_t(dtype_row_bytes(w.dtype, w.cols));
  p.norm_w = a.norm_w;
  p.eps = a.eps;
  p.bias = a.bias;
  p.accumulate = a.accumulate ? 1 : 0;
  p.y = a.y;
  p.ldy = a.ldy;
  p.wpr = 1;
  return p;
}

void check_dtype(const DeviceWeight& w) {
  if (w.dtype != DType::F32 && w.dtype != DType::F16 && w.dtype != DType::BF16)
    fail("CUDA linear: weight dtype {} is not supported (f32, f16, bf16 only)", dtype_name(w.dtype));
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

bool gemv_supported(const LinearArgs& a, const DeviceWeight& w) {
  const int64_t vec = w.dtype == DType::F32 ? 4 : 8;
  return a.m >= 1 && a.m <= kGemvMaxRows && w.cols % vec == 0 && a.ldx % 4 == 0 && aligned16(a.x) &&
         aligned16(w.data) && (a.op != InputOp::RmsNorm || aligned16(a.norm_w)) &&
         (a.op != InputOp::SiluMul || a.ldx >= 2 * w.cols);
}

void gemv(const LinearArgs& a, const DeviceWeight& w, cudaStream_t s) {
  check_dtype(w);
  if (!gemv_supported(a, w)) fail("CUDA gemv: unsupported shape or alignment (m={}, K={})", a.m, w.cols);
  GemvParams p = params(a, w);
  while (p.wpr < kWarps && w.rows * p.wpr / kWarps < 2 * sm_count()) p.wpr *= 2;
  const unsigned grid = blocks_for(w.rows, kWarps / p.wpr);
  switch (w.dtype) {
    case DType::F32: launch_gemv<DType::F32>(p, a.op, grid, s); break;
    case DType::F16: launch_gemv<DType::F16>(p, a.op, grid, s); break;
    default: launch_gemv<DType::BF16>(p, a.op, grid, s); break;
  }
  check_launch("gemv");
}

void gemm(const LinearArgs& a, const DeviceWeight& w, cudaStream_t s) {
  check_dtype(w);
  if (a.op != InputOp::None) fail("CUDA gemm: input transforms are only fused in the GEMV path");
  const GemvParams p = params(a, w);
  const dim3 grid(blocks_for(w.rows, BN), blocks_for(a.m, BM));
  switch (w.dtype) {
    case DType::F32: gemm_kernel<DType::F32><<<grid, kThreads, 0, s>>>(p); break;
    case DType::F16: gemm_kernel<DType::F16><<<grid, kThreads, 0, s>>>(p); break;
    default: gemm_kernel<DType::BF16><<<grid, kThreads, 0, s>>>(p); break;
  }
  check_launch("gemm");
}

void linear(const LinearArgs& a, const DeviceWeight& w, cudaStream_t s) {
  if (a.m <= 0) return;
  if (gemv_supported(a, w)) gemv(a, w, s);
  else gemm(a, w, s);
}

}  // namespace anybit::cuda
