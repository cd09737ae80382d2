// RoPE ("rotate_half" pairing, like kernels/rope_cpu.cpp) fused with the KV-cache write:
// one block per token rotates its q heads in place and writes rotated k and plain v into
// the token's cache slot (rounded to the cache's dtype; int8 rows quantized with their own
// scale by one warp each). The angle is the fp32 product pos * inv_freq, as on the CPU,
// and its cos/sin are taken in double so both backends agree to the last bit there.
#include "kernels/cuda_common.cuh"

namespace anybit::cuda {
namespace {

template <DType D>
__global__ void rope_kv_kernel(const RopeKVArgs a) {
  detail::pdl_wait();
  detail::pdl_trigger();
  const int64_t t = blockIdx.x;
  const int64_t hd = a.kv.head_dim, half = hd / 2, nkv = a.kv.n_kv_heads;
  float* row = a.qkv + t * a.ld;
  const float pos = float(a.pos[t]);
  const int64_t pairs = (a.n_heads + nkv) * half;
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int64_t h = p / half, i = p % half;
    float* v = row + h * hd;  // q heads then k heads are contiguous in the row
    detail::rope_pair(v + i, v + i + half, v[i], v[i + half], pos, a.inv_freq[i]);
  }
  __syncthreads();  // the rotated k heads are read back by other warps
  // Rows [q heads | k heads | v heads]: the kv heads' k then v rows go to the cache slot.
  const int64_t slot = a.slot[t];
  const int64_t block = slot / a.kv.block_size, off = slot % a.kv.block_size;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  for (int64_t w = warp; w < 2 * nkv; w += warps)
    detail::store_kv_row<D>(a.kv, a.kv.head_offset(block, a.layer, int(w / nkv), w % nkv), off,
                 row + (a.n_heads + w) * hd, lane);
}

}  // namespace

void rope_kv_write(const RopeKVArgs& a, cudaStream_t s) {
  if (a.n_tok <= 0) return;
  check_kv_dtype(a.kv.dtype, "rope_kv_write");
  switch (a.kv.dtype) {
    case DType::F16: detail::launch_pdl(rope_kv_kernel<DType::F16>, dim3(unsigned(a.n_tok)), dim3(128), 0, s, a); break;
    case DType::BF16: detail::launch_pdl(rope_kv_kernel<DType::BF16>, dim3(unsigned(a.n_tok)), dim3(128), 0, s, a); break;
    case DType::I8: detail::launch_pdl(rope_kv_kernel<DType::I8>, dim3(unsigned(a.n_tok)), dim3(128), 0, s, a); break;
    default: detail::launch_pdl(rope_kv_kernel<DType::F32>, dim3(unsigned(a.n_tok)), dim3(128), 0, s, a); break;
  }
  check_launch("rope_kv_write");
}

}  // namespace anybit::cuda
