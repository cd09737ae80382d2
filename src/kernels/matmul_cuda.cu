// y = op(x) · W^T on the GPU, fp32 activations and accumulation, weights widened from
// their stored dtype on load.
//
// GEMV (decode, m <= 4): bound by reading W once. Each output row is owned by 1..8 warps
// (more warps per row, i.e. split-K inside the block, when N is too small to fill the
// chip); every lane keeps 4 independent 16-byte weight loads in flight. The input
// transform (RMSNorm or SiLU·mul) is applied while reading x, so decode needs no separate
// norm / activation launches; x is tiny and stays in L1/L2.
//
// GEMM (m > 4: prefill, batched decode): for bf16 and f16 weights, cuBLAS on the tensor
// cores (inside graph captures too, once reserve_gemm_workspace has sized the workspace) with
// the fp32 activations split into two terms of the weights' type (bf16: x = hi + lo,
// |x - hi - lo| <= 2^-17 |x|; f16: see Split<__half>) stacked as 2m columns of one GEMM,
// summed in the epilogue: 16-bit products are exact in fp32, so the result keeps ~fp32
// accuracy at tensor-core speed. f32 weights (and everything when ANYBIT_CUDA_GEMM=simt) use
// a plain 64x64 tiled SIMT kernel in fp32.
#include <algorithm>
#include <cstdlib>
#include <string>

#ifdef ANYBIT_WITH_CUBLAS
#include <cublas_v2.h>
#endif

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
  int wpr;    // warps per output row
  int stage;  // op(x) is staged in shared memory (M * K floats)
};

// op(x)[i][c .. c+V) read straight from global memory (the path when x is too big to stage).
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

// PAIR: rows 2j and 2j+1 of W are gate_j and up_j; the block writes silu(gate_j) * up_j to
// column j of y instead of the two raw outputs (SwiGLU fused into the gate|up GEMV).
template <DType D, int M, InputOp OP, bool PAIR>
__global__ void __launch_bounds__(kThreads) gemv_kernel(const GemvParams p) {
  using E = Elt<D>;
  constexpr int V = E::kVec;
  constexpr int U = 4;  // vectors in flight per lane
  extern __shared__ float4 s_x4[];
  float* xs = reinterpret_cast<float*>(s_x4);
  __shared__ float s_red[kWarps][M];
  __shared__ float s_inv[M];
  __shared__ float s_out[kWarps][M];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int rows_per_block = kWarps / p.wpr;
  const int64_t n = int64_t(blockIdx.x) * rows_per_block + warp / p.wpr;
  const int t_in_row = (warp % p.wpr) * 32 + lane;
  const int64_t step = int64_t(p.wpr) * 32 * V;
  const char* wrow = p.w + (n < p.N ? n : 0) * p.row_bytes;

  // The first weight loads go out before anything waits on x, so the prologue's latency
  // overlaps the DRAM latency instead of adding to it.
  uint4 raw[U];
  const int64_t c_first = int64_t(t_in_row) * V;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t c = c_first + u * step;
    if (n < p.N && c < p.K) raw[u] = load_stream(wrow + c * E::kBytes);
  }

  pdl_wait();  // x, y and the norm are written by earlier kernels; the weights are not
  pdl_trigger();
  float inv[M];
#pragma unroll
  for (int i = 0; i < M; ++i) inv[i] = 1.0f;
  if (p.stage || OP == InputOp::RmsNorm) {
    float ss[M];
#pragma unroll
    for (int i = 0; i < M; ++i) ss[i] = 0.0f;
    for (int64_t c = int64_t(threadIdx.x) * 4; c < p.K; c += kThreads * 4) {
#pragma unroll
      for (int i = 0; i < M; ++i)
        if (i < p.m) {
          const float* xr = p.x + i * p.ldx + c;
          float4 v = *reinterpret_cast<const float4*>(xr);
          if constexpr (OP == InputOp::RmsNorm) ss[i] += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
          if constexpr (OP == InputOp::SiluMul) {
            const float4 u = *reinterpret_cast<const float4*>(xr + p.K);
            v.x = silu(v.x) * u.x, v.y = silu(v.y) * u.y, v.z = silu(v.z) * u.z, v.w = silu(v.w) * u.w;
          }
          if (p.stage) *reinterpret_cast<float4*>(xs + i * p.K + c) = v;
        }
    }
    if constexpr (OP == InputOp::RmsNorm) {
      block_rms_inv<M, kWarps>(ss, s_red, s_inv, p.K, p.eps, inv);
      if (p.stage) {
        // x * inv * w, the CPU's order of operations
        for (int64_t c = threadIdx.x; c < p.K; c += kThreads)
#pragma unroll
          for (int i = 0; i < M; ++i)
            if (i < p.m) xs[i * p.K + c] = xs[i * p.K + c] * inv[i] * p.norm_w[c];
      }
    }
    __syncthreads();
  }

  float acc[M];
#pragma unroll
  for (int i = 0; i < M; ++i) acc[i] = 0.0f;
  auto consume = [&](const uint4& r, int64_t c) {
    float wv[V];
    E::widen(r, wv);
#pragma unroll
    for (int i = 0; i < M; ++i)
      if (i < p.m) {
        float xv[V];
        if (p.stage) {
#pragma unroll
          for (int v = 0; v < V; v += 4) {
            const float4 a = *reinterpret_cast<const float4*>(xs + i * p.K + c + v);
            xv[v] = a.x, xv[v + 1] = a.y, xv[v + 2] = a.z, xv[v + 3] = a.w;
          }
        } else {
          load_x<OP, V>(p, i, c, inv[i], xv);
        }
        float s = 0.0f;
#pragma unroll
        for (int v = 0; v < V; ++v) s = fmaf(xv[v], wv[v], s);
        acc[i] += s;
      }
  };
  // Plain x (read from L1/L2 as it goes): a ring of U slots, each slot's next load issued
  // before its current vector is used, so U loads stay in flight through the whole row.
  // Staged x, and rows whose share is all loaded in the prologue: rounds of U loads, then
  // U uses. Measured on an H100 (PERFORMANCE.md, thirteenth session): the ring made the
  // plain 1B down GEMV 7% (bf16) and 11% (f16) faster, the staged f16 GEMVs with RMSNorm
  // 7-20% slower, and the 1B o GEMV (one round) 5% slower.
  if (n < p.N && (OP != InputOp::None || p.K <= step * U)) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = c_first + u * step;
      if (c < p.K) consume(raw[u], c);
    }
    for (int64_t c0 = c_first + step * U; c0 < p.K; c0 += step * U) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t c = c0 + u * step;
        if (c < p.K) raw[u] = load_stream(wrow + c * E::kBytes);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t c = c0 + u * step;
        if (c < p.K) consume(raw[u], c);
      }
    }
  } else if (n < p.N) {
    for (int64_t c0 = c_first; c0 < p.K; c0 += step * U) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t c = c0 + u * step;
        if (c < p.K) {
          const uint4 cur = raw[u];
          const int64_t cn = c + step * U;
          if (cn < p.K) raw[u] = load_stream(wrow + cn * E::kBytes);
          consume(cur, c);
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < M; ++i) acc[i] = warp_sum(acc[i]);
  if (p.wpr > 1) {
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
  if constexpr (PAIR) {
    const int r = warp / p.wpr;
    if (lane == 0 && warp % p.wpr == 0)
#pragma unroll
      for (int i = 0; i < M; ++i) s_out[r][i] = acc[i] + (p.bias && n < p.N ? p.bias[n] : 0.0f);
    __syncthreads();
    const int pairs = rows_per_block / 2;
    if (int(threadIdx.x) < pairs * M) {
      const int j = threadIdx.x % pairs, i = threadIdx.x / pairs;
      const int64_t row0 = int64_t(blockIdx.x) * rows_per_block + 2 * j;
      if (i < p.m && row0 + 1 < p.N) p.y[i * p.ldy + row0 / 2] = silu(s_out[2 * j][i]) * s_out[2 * j + 1][i];
    }
  } else if (n < p.N && lane == 0 && warp % p.wpr == 0) {
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

template <DType D, int M, bool PAIR>
void launch_gemv_m(const GemvParams& p, InputOp op, unsigned grid, cudaStream_t s) {
  const size_t shm = p.stage ? size_t(M) * size_t(p.K) * sizeof(float) : 0;
  switch (op) {
    case InputOp::None: launch_pdl(gemv_kernel<D, M, InputOp::None, PAIR>, grid, kThreads, shm, s, p); break;
    case InputOp::RmsNorm: launch_pdl(gemv_kernel<D, M, InputOp::RmsNorm, PAIR>, grid, kThreads, shm, s, p); break;
    case InputOp::SiluMul:
      if constexpr (PAIR) fail("CUDA gemv: SiLU input and SiLU pairs do not combine");
      else launch_pdl(gemv_kernel<D, M, InputOp::SiluMul, false>, grid, kThreads, shm, s, p);
      break;
  }
}

template <DType D, bool PAIR>
void launch_gemv(const GemvParams& p, InputOp op, unsigned grid, cudaStream_t s) {
  if (p.m <= 1) launch_gemv_m<D, 1, PAIR>(p, op, grid, s);
  else if (p.m <= 2) launch_gemv_m<D, 2, PAIR>(p, op, grid, s);
  else launch_gemv_m<D, 4, PAIR>(p, op, grid, s);
}

// ---- GEMM ------------------------------------------------------------------------
constexpr int BM = 64, BN = 64, BK = 16;

template <DType D>
__global__ void __launch_bounds__(kThreads) gemm_kernel(const GemvParams p) {
  using E = Elt<D>;
  pdl_wait();
  pdl_trigger();
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

#ifdef ANYBIT_WITH_CUBLAS
// The 16-bit type of the split activations, matching the weights (cuBLAS multiplies one
// type). f16 has 5 exponent bits: x is scaled by 2^-kF16Shift first (the GEMM's alpha undoes
// it) and clamped to the f16 range, so |x| up to 2^20 is represented; below that the split
// keeps about 2^-22 relative, with an absolute floor of 2^-20 where the terms turn subnormal.
constexpr float kF16Shift = 16.0f;
template <typename T>
struct Split;
template <>
struct Split<__nv_bfloat16> {
  static constexpr cudaDataType_t kType = CUDA_R_16BF;
  static constexpr float kAlpha = 1.0f;
  __device__ static void run(float v, __nv_bfloat16& hi, __nv_bfloat16& lo) {
    hi = __float2bfloat16_rn(v);
    lo = __float2bfloat16_rn(v - __bfloat162float(hi));
  }
};
template <>
struct Split<__half> {
  static constexpr cudaDataType_t kType = CUDA_R_16F;
  static constexpr float kAlpha = kF16Shift;
  __device__ static void run(float v, __half& hi, __half& lo) {
    v = fminf(65504.0f, fmaxf(-65504.0f, v * (1.0f / kF16Shift)));
    hi = __float2half_rn(v);
    lo = __float2half_rn(v - __half2float(hi));
  }
};

template <typename T>
__global__ void split_kernel(const float* x, int64_t m, int64_t K, int64_t ldx, T* out) {
  pdl_wait();
  const int64_t total = m * K;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / K, c = e % K;
    Split<T>::run(x[i * ldx + c], out[e], out[total + e]);
  }
}

__global__ void combine_split_kernel(const float* c, int64_t m, int64_t n, const float* bias, int accumulate, float* y,
                                     int64_t ldy) {
  pdl_wait();
  const int64_t total = m * n;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / n, j = e % n;
    float v = c[e] + c[total + e];
    if (bias) v += bias[j];
    float* yp = y + i * ldy + j;
    if (accumulate) v += *yp;
    *yp = v;
  }
}

bool tensor_core_gemm_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("ANYBIT_CUDA_GEMM");
    return !(e && std::string(e) == "simt");
  }();
  return on;
}

// One cuBLAS handle and one growing workspace for the process (prefill runs on one stream
// at a time). Graph captures (batched decode) must not allocate: cuBLAS gets a fixed
// workspace of its own at creation, and ours is grown beforehand by reserve_gemm_workspace;
// a captured GEMM that would not fit takes the SIMT kernel instead.
struct CublasState {
  cublasHandle_t handle = nullptr;
  void* ws = nullptr;
  size_t ws_bytes = 0;
  void* lib_ws = nullptr;
};
constexpr size_t kCublasLibWorkspace = size_t(32) << 20;
CublasState& cublas_storage() {  // without creating the handle (creation allocates)
  static CublasState st;
  return st;
}
CublasState& cublas_state() {
  CublasState& st = cublas_storage();
  if (!st.handle) {
    if (cublasCreate(&st.handle) != CUBLAS_STATUS_SUCCESS) fail("cuBLAS: cublasCreate failed");
    check(cudaMalloc(&st.lib_ws, kCublasLibWorkspace), "cudaMalloc (cuBLAS library workspace)");
    if (cublasSetWorkspace(st.handle, st.lib_ws, kCublasLibWorkspace) != CUBLAS_STATUS_SUCCESS)
      fail("cuBLAS: cublasSetWorkspace failed");
  }
  return st;
}

// Rows of x per cuBLAS call (bounds the workspace) and the bytes one call needs.
constexpr int64_t kSplitChunk = 2048;
size_t split_workspace_bytes(int64_t m, int64_t K, int64_t N) {
  const int64_t chunk = std::min<int64_t>(m, kSplitChunk);
  return size_t(2 * chunk * K) * 2 + 256 + size_t(2 * chunk * N) * 4 + 256;
}

void grow_workspace(CublasState& st, size_t need, cudaStream_t s) {
  if (need <= st.ws_bytes) return;
  check(cudaStreamSynchronize(s), "cudaStreamSynchronize (cuBLAS workspace)");
  cudaFree(st.ws);
  st.ws = nullptr;
  st.ws_bytes = 0;
  check(cudaMalloc(&st.ws, need), "cudaMalloc (cuBLAS workspace)");
  st.ws_bytes = need;
}

void cublas_check(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS) fail("cuBLAS error {} in {}", int(st), what);
}

template <typename T>
void gemm_split(const LinearArgs& a, const DeviceWeight& w, cudaStream_t s) {
  CublasState& st = cublas_state();
  const int64_t N = w.rows, K = w.cols;
  const int64_t chunk = std::min<int64_t>(a.m, kSplitChunk);
  grow_workspace(st, split_workspace_bytes(a.m, K, N), s);  // a no-op inside a capture (checked by gemm)
  auto* xs = static_cast<T*>(st.ws);
  float* c = reinterpret_cast<float*>(static_cast<char*>(st.ws) + (size_t(2 * chunk * K) * 2 + 255) / 256 * 256);
  cublas_check(cublasSetStream(st.handle, s), "cublasSetStream");
  const float alpha = Split<T>::kAlpha, zero = 0.0f;
  for (int64_t i0 = 0; i0 < a.m; i0 += chunk) {
    const int64_t mm = std::min(chunk, a.m - i0);
    const unsigned g1 = unsigned(std::min<int64_t>((mm * K + 255) / 256, 8192));
    split_kernel<T><<<g1, 256, 0, s>>>(a.x + i0 * a.ldx, mm, K, a.ldx, xs);
    check_launch("split_kernel");
    // Column-major view: C[N][2mm] = W^T-as-stored (K x N, op T) times X (K x 2mm).
    cublas_check(cublasGemmEx(st.handle, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(2 * mm), int(K), &alpha, w.data,
                              Split<T>::kType, int(K), xs, Split<T>::kType, int(K), &zero, c, CUDA_R_32F, int(N),
                              CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT),
                 "cublasGemmEx");
    const unsigned g2 = unsigned(std::min<int64_t>((mm * N + 255) / 256, 8192));
    combine_split_kernel<<<g2, 256, 0, s>>>(c, mm, N, a.bias, a.accumulate ? 1 : 0, a.y + i0 * a.ldy, a.ldy);
    check_launch("combine_split");
  }
}
#endif

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
         (a.op != InputOp::SiluMul || a.ldx >= 2 * w.cols) && (!a.silu_pairs || (w.rows % 2 == 0 && !a.accumulate));
}

void gemv(const LinearArgs& a, const DeviceWeight& w, cudaStream_t s) {
  check_dtype(w);
  if (!gemv_supported(a, w)) fail("CUDA gemv: unsupported shape or alignment (m={}, K={})", a.m, w.cols);
  GemvParams p = params(a, w);
  const int max_wpr = a.silu_pairs ? kWarps / 2 : kWarps;  // a block must hold whole gate/up pairs
  while (p.wpr < max_wpr && w.rows * p.wpr / kWarps < 2 * sm_count()) p.wpr *= 2;
  const int64_t rounded_m = a.m <= 1 ? 1 : a.m <= 2 ? 2 : 4;
  // Staging pays for a transform (norm, SiLU) computed once per block instead of per row;
  // plain x is read straight from L1/L2.
  p.stage = a.op != InputOp::None && rounded_m * w.cols * int64_t(sizeof(float)) <= 48 * 1024 ? 1 : 0;
  const unsigned grid = blocks_for(w.rows, kWarps / p.wpr);
  const bool pair = a.silu_pairs;
  switch (w.dtype) {
    case DType::F32: pair ? launch_gemv<DType::F32, true>(p, a.op, grid, s) : launch_gemv<DType::F32, false>(p, a.op, grid, s); break;
    case DType::F16: pair ? launch_gemv<DType::F16, true>(p, a.op, grid, s) : launch_gemv<DType::F16, false>(p, a.op, grid, s); break;
    default: pair ? launch_gemv<DType::BF16, true>(p, a.op, grid, s) : launch_gemv<DType::BF16, false>(p, a.op, grid, s); break;
  }
  check_launch("gemv");
}

void gemm(const LinearArgs& a, const DeviceWeight& w, cudaStream_t s) {
  check_dtype(w);
  if (a.op != InputOp::None || a.silu_pairs) fail("CUDA gemm: input/output transforms are only fused in the GEMV path");
#ifdef ANYBIT_WITH_CUBLAS
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(s, &cap), "cudaStreamIsCapturing");
  if ((w.dtype == DType::BF16 || w.dtype == DType::F16) && a.m > kGemvMaxRows && tensor_core_gemm_enabled()) {
    const CublasState& st = cublas_storage();
    if (cap == cudaStreamCaptureStatusNone ||
        (st.handle && split_workspace_bytes(a.m, w.cols, w.rows) <= st.ws_bytes)) {
      if (w.dtype == DType::BF16) gemm_split<__nv_bfloat16>(a, w, s);
      else gemm_split<__half>(a, w, s);
      return;
    }
  }
#endif
  const GemvParams p = params(a, w);
  const dim3 grid(blocks_for(w.rows, BN), blocks_for(a.m, BM));
  switch (w.dtype) {
    case DType::F32: gemm_kernel<DType::F32><<<grid, kThreads, 0, s>>>(p); break;
    case DType::F16: gemm_kernel<DType::F16><<<grid, kThreads, 0, s>>>(p); break;
    default: gemm_kernel<DType::BF16><<<grid, kThreads, 0, s>>>(p); break;
  }
  check_launch("gemm");
}

void reserve_gemm_workspace(int64_t m, int64_t K, int64_t N, cudaStream_t s) {
#ifdef ANYBIT_WITH_CUBLAS
  if (m <= kGemvMaxRows || !tensor_core_gemm_enabled()) return;
  grow_workspace(cublas_state(), split_workspace_bytes(m, K, N), s);
#else
  (void)m, (void)K, (void)N, (void)s;
#endif
}

void linear(const LinearArgs& a, const DeviceWeight& w, cudaStream_t s) {
  if (a.m <= 0) return;
  if (gemv_supported(a, w)) gemv(a, w, s);
  else if (a.silu_pairs) fail("CUDA linear: the fused SiLU pairs need the GEMV path (m={}, K={})", a.m, w.cols);
  else gemm(a, w, s);
}

}  // namespace anybit::cuda
