// RMSNorm over rows on the GPU: one block per row, fp32 throughout.
#include "kernels/cuda_common.cuh"

namespace anybit::cuda {
namespace {

using namespace detail;

__global__ void __launch_bounds__(256) rmsnorm_kernel(const float* x, int64_t ldx, const float* w, int64_t n,
                                                      float eps, float* out, int64_t ldo) {
  __shared__ float s_part[8];
  pdl_wait();
  pdl_trigger();
  const float* xr = x + int64_t(blockIdx.x) * ldx;
  float* o = out + int64_t(blockIdx.x) * ldo;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) ss += xr[c] * xr[c];
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) s_part[threadIdx.x >> 5] = ss;
  __syncthreads();
  float t = 0.0f;
  for (int i = 0; i < int(blockDim.x >> 5); ++i) t += s_part[i];
  const float inv = 1.0f / sqrtf(t / float(n) + eps);
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) o[c] = xr[c] * inv * w[c];
}

}  // namespace

void rmsnorm(const float* x, int64_t ldx, const float* w, int64_t m, int64_t n, float eps, float* out, int64_t ldo,
             cudaStream_t s) {
  if (m <= 0) return;
  rmsnorm_kernel<<<unsigned(m), 256, 0, s>>>(x, ldx, w, n, eps, out, ldo);
  check_launch("rmsnorm");
}

}  // namespace anybit::cuda
