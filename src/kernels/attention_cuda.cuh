// Pieces the two decode-attention kernels share (attention_cuda.cu defines them): the
// argument checks and the kernel that merges the per-split partial results.
#pragma once
#include "kernels/cuda_kernels.h"

namespace anybit::cuda {

constexpr int kAttnMaxGroup = 8;  // query heads per kv head one decode block serves

// Throws for a shape, dtype, group size or missing workspace no decode kernel can take.
void check_decode_args(const AttentionArgs& a);
// out = the softmax-weighted merge of the a.n_splits partial (max, sum, acc) rows.
void attention_combine(const AttentionArgs& a, cudaStream_t s);

}  // namespace anybit::cuda
