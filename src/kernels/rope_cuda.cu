// RoPE ("rotate_half" pairing, like kernels/rope_cpu.cpp) fused with the KV-cache write:
// one block per token rotates its q heads in place and writes rotated k and plain v into
// the token's cache slot. The angle is the fp32 product pos * inv_freq, as on the CPU,
// and its cos/sin are taken in double so both backends agree to the last bit there.
#include "kernels/cuda_common.cuh"

namespace anybit::cuda {
namespace {

__global__ void rope_kv_kernel(const RopeKVArgs a) {
  detail::pdl_wait();
  detail::pdl_trigger();
  const int64_t t = blockIdx.x;
  const int64_t hd = a.kv.head_dim, half = hd / 2, nkv = a.kv.n_kv_heads;
  float* row = a.qkv + t * a.ld;
  const float pos = float(a.pos[t]);
  const int64_t slot = a.slot[t];
  const int64_t block = slot / a.kv.block_size, off = slot % a.kv.block_size;
  float* kbase = a.kv.base + block * a.kv.block_floats() + (a.layer * 2 * nkv) * a.kv.block_size * hd + off * hd;
  float* vbase = kbase + nkv * a.kv.block_size * hd;
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
      float* k = kbase + (h - a.n_heads) * a.kv.block_size * hd;
      k[i] = r0;
      k[i + half] = r1;
    }
  }
  const float* vsrc = row + (a.n_heads + nkv) * hd;
  for (int64_t e = threadIdx.x; e < nkv * hd; e += blockDim.x)
    vbase[(e / hd) * a.kv.block_size * hd + e % hd] = vsrc[e];
}

}  // namespace

void rope_kv_write(const RopeKVArgs& a, cudaStream_t s) {
  if (a.n_tok <= 0) return;
  detail::launch_pdl(rope_kv_kernel, dim3(unsigned(a.n_tok)), dim3(128), 0, s, a);
  check_launch("rope_kv_write");
}

}  // namespace anybit::cuda
