// RoPE ("rotate_half" pairing, like kernels/rope_cpu.cpp) fused with the KV-cache write:
// one block per token rotates its q heads in place and writes rotated k and plain v into
// the token's cache slot (rounded to the cache's dtype). The angle is the fp32 product pos * inv_freq, as on the CPU,
// and its cos/sin are taken in double so both backends agree to the last bit there.
#include "kernels/cuda_common.cuh"

namespace anybit::cuda {
namespace {

template <DType D>
__global__ void rope_kv_kernel(const RopeKVArgs a) {
  detail::pdl_wait();
  detail::pdl_trigger();
  using E = detail::Elt<D>;
  const int64_t t = blockIdx.x;
  const int64_t hd = a.kv.head_dim, half = hd / 2, nkv = a.kv.n_kv_heads;
  float* row = a.qkv + t * a.ld;
  const float pos = float(a.pos[t]);
  const int64_t slot = a.slot[t];
  const int64_t block = slot / a.kv.block_size, off = slot % a.kv.block_size;
  const int64_t kbase = detail::kv_row(a.kv, block, a.layer, 0, 0, off);
  const int64_t vbase = detail::kv_row(a.kv, block, a.layer, 1, 0, off);
  const int64_t head_stride = a.kv.block_size * hd;
  const int64_t pairs = (a.n_heads + nkv) * half;
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int64_t h = p / half, i = p % half;
    double sn, cs;
    sincos(double(pos * a.inv_freq[i]), &sn, &cs);
    float* v = row + h * hd;  // q heads then k heads are contiguous in the row
    const float x0 = v[i], x1 = v[i + half];
    const float r0 = x0 * float(cs) - x1 * float(sn), r1 = x1 * float(cs) + x0 * float(sn);
    v[i] = r0;
    v[i + half] = r1;
    if (h >= a.n_heads) {
      const int64_t k = kbase + (h - a.n_heads) * head_stride;
      E::store(a.kv.base, k + i, r0);
      E::store(a.kv.base, k + i + half, r1);
    }
  }
  const float* vsrc = row + (a.n_heads + nkv) * hd;
  for (int64_t e = threadIdx.x; e < nkv * hd; e += blockDim.x)
    E::store(a.kv.base, vbase + (e / hd) * head_stride + e % hd, vsrc[e]);
}

}  // namespace

void rope_kv_write(const RopeKVArgs& a, cudaStream_t s) {
  if (a.n_tok <= 0) return;
  check_kv_dtype(a.kv.dtype, "rope_kv_write");
  switch (a.kv.dtype) {
    case DType::F16: detail::launch_pdl(rope_kv_kernel<DType::F16>, dim3(unsigned(a.n_tok)), dim3(128), 0, s, a); break;
    case DType::BF16: detail::launch_pdl(rope_kv_kernel<DType::BF16>, dim3(unsigned(a.n_tok)), dim3(128), 0, s, a); break;
    default: detail::launch_pdl(rope_kv_kernel<DType::F32>, dim3(unsigned(a.n_tok)), dim3(128), 0, s, a); break;
  }
  check_launch("rope_kv_write");
}

}  // namespace anybit::cuda
