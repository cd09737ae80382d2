// Pieces the two decode-attention kernels share (attention_cuda.cu defines them): the
// argument checks and the kernel that merges the per-split partial results.
#pragma once
#include "kernels/cuda_kernels.h"

namespace anybit::cuda {

constexpr int kAttnMaxGroup = 8;  // query heads per kv head one decode block serves

// Throws for a shape, dtype, group size or missing workspace no decode kernel can take.
void check_decode_args(const AttentionArgs& a);
// out = the softmax-weighted merge of the partial (max, sum, acc) rows of the splits that
// hold positions; a row with one such split was written by the decode kernel itself.
void attention_combine(const AttentionArgs& a, cudaStream_t s);

#ifdef __CUDACC__
// Positions [lo, hi) of split sp of query row t, and how many splits hold any position.
// The context is divided evenly over the splits on the device (from the row's own length,
// in tiles of 16), so a graph captured for the cache's capacity still spreads a short
// context; the splits past n_active are empty: their blocks return at once and the merge
// reads only the first n_active partial rows, so a cache sized for 128k positions costs a
// short context nothing.
struct DecodeSplit {
  int64_t lo, hi;
  int n_active;
};
__device__ __forceinline__ DecodeSplit decode_split(const AttentionArgs& a, int64_t t, int64_t sp) {
  const int64_t n_ctx = int64_t(a.tok_pos[t]) + 1;
  const int64_t start = a.window > 0 ? (n_ctx - a.window > 0 ? n_ctx - a.window : 0) : 0;
  const int64_t len = n_ctx - start;
  int64_t chunk = ((len + a.n_splits - 1) / a.n_splits + 15) / 16 * 16;
  if (chunk < 16) chunk = 16;
  DecodeSplit r;
  r.lo = start + sp * chunk < n_ctx ? start + sp * chunk : n_ctx;
  r.hi = r.lo + chunk < n_ctx ? r.lo + chunk : n_ctx;
  r.n_active = int((len + chunk - 1) / chunk);
  return r;
}
#endif

}  // namespace anybit::cuda
