// Small element-wise kernels (SiLU·mul, embedding gather, row gather, argmax) and the
// error helpers shared by every CUDA source.
#include <algorithm>
#include <cfloat>

#include "core/error.h"
#include "kernels/cuda_common.cuh"

namespace anybit::cuda {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA error in {}: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no driver" error for later callers
    return 0;
  }
  return n;
}

namespace {

using namespace detail;

__global__ void silu_mul_kernel(const float* gu, int64_t m, int64_t n, float* out) {
  pdl_wait();
  const int64_t total = m * n;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / n, c = i % n;
    const float* row = gu + r * 2 * n;
    out[i] = silu(row[c]) * row[n + c];
  }
}

__global__ void silu_mul_pairs_kernel(const float* gu, int64_t m, int64_t n, float* out) {
  pdl_wait();
  const int64_t total = m * n;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const float2 g = reinterpret_cast<const float2*>(gu)[i];  // row r, pair c sits at 2 * (r * n + c)
    out[i] = silu(g.x) * g.y;
  }
}

template <DType D>
__global__ void embed_kernel(const int32_t* tokens, const char* table, int64_t row_bytes, int64_t h, float* x) {
  pdl_wait();
  pdl_trigger();
  const char* row = table + int64_t(tokens[blockIdx.x]) * row_bytes;
  float* o = x + int64_t(blockIdx.x) * h;
  for (int64_t c = threadIdx.x; c < h; c += blockDim.x) o[c] = Elt<D>::at(row, c);
}

__global__ void gather_kernel(const float* x, const int32_t* rows, int64_t n, float* out) {
  pdl_wait();
  pdl_trigger();
  const float* src = x + int64_t(rows[blockIdx.x]) * n;
  float* o = out + int64_t(blockIdx.x) * n;
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) o[c] = src[c];
}

__global__ void __launch_bounds__(256) argmax_kernel(const float* x, int64_t n, int32_t* out) {
  __shared__ float s_v[8];
  __shared__ int64_t s_i[8];
  pdl_wait();
  const float* row = x + int64_t(blockIdx.x) * n;
  float best = -FLT_MAX;
  int64_t bi = n;  // "none yet": loses every tie
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
    const float v = row[c];
    if (v > best || (v == best && c < bi)) best = v, bi = c;  // NaN compares false: never taken
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > best || (ov == best && oi < bi)) best = ov, bi = oi;
  }
  if ((threadIdx.x & 31) == 0) s_v[threadIdx.x >> 5] = best, s_i[threadIdx.x >> 5] = bi;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < int(blockDim.x >> 5); ++w)
      if (s_v[w] > best || (s_v[w] == best && s_i[w] < bi)) best = s_v[w], bi = s_i[w];
    out[blockIdx.x] = int32_t(bi < n ? bi : 0);
  }
}

}  // namespace

void silu_mul(const float* gu, int64_t m, int64_t n, float* out, cudaStream_t s) {
  if (m <= 0) return;
  const int64_t total = m * n;
  silu_mul_kernel<<<unsigned(std::min<int64_t>((total + 255) / 256, 65535)), 256, 0, s>>>(gu, m, n, out);
  check_launch("silu_mul");
}

void silu_mul_pairs(const float* gu, int64_t m, int64_t n, float* out, cudaStream_t s) {
  if (m <= 0) return;
  const int64_t total = m * n;
  silu_mul_pairs_kernel<<<unsigned(std::min<int64_t>((total + 255) / 256, 65535)), 256, 0, s>>>(gu, m, n, out);
  check_launch("silu_mul_pairs");
}

void embed(const int32_t* tokens, int64_t n_tok, const DeviceWeight& t, float* x, cudaStream_t s) {
  if (n_tok <= 0) return;
  const int64_t rb = int64_t(dtype_row_bytes(t.dtype, t.cols));
  const char* tab = static_cast<const char*>(t.data);
  switch (t.dtype) {
    case DType::F32: embed_kernel<DType::F32><<<unsigned(n_tok), 256, 0, s>>>(tokens, tab, rb, t.cols, x); break;
    case DType::F16: embed_kernel<DType::F16><<<unsigned(n_tok), 256, 0, s>>>(tokens, tab, rb, t.cols, x); break;
    case DType::BF16: embed_kernel<DType::BF16><<<unsigned(n_tok), 256, 0, s>>>(tokens, tab, rb, t.cols, x); break;
    default: fail("CUDA embed: dtype {} is not supported", dtype_name(t.dtype));
  }
  check_launch("embed");
}

void gather_rows(const float* x, const int32_t* rows, int64_t n_rows, int64_t n, float* out, cudaStream_t s) {
  if (n_rows <= 0) return;
  launch_pdl(gather_kernel, dim3(unsigned(n_rows)), dim3(256), 0, s, x, rows, n, out);
  check_launch("gather_rows");
}

void argmax_rows(const float* x, int64_t n_rows, int64_t n, int32_t* out, cudaStream_t s) {
  if (n_rows <= 0) return;
  argmax_kernel<<<unsigned(n_rows), 256, 0, s>>>(x, n, out);
  check_launch("argmax_rows");
}

}  // namespace anybit::cuda
