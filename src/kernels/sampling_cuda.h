// Token sampling on the GPU (src/kernels/sampling_cuda.cu): the semantics of
// runtime/sampler.cpp (repetition penalty, temperature, top-k, min-p, top-p) on device
// logits, so a step needs no logits download and no host sort of the vocabulary.
#pragma once
#ifdef ANYBIT_WITH_CUDA
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda_kernels.h"  // ANYBIT_HOST_DEVICE

namespace anybit::cuda {

// One logits row's request. The filters are those of SamplingParams; `u` is a uniform draw in
// [0, 1) from the host's generator (the kernel itself is deterministic).
struct SampleRow {
  float temperature = 0.0f;  // 0 = greedy (argmax after the penalty, first index of the maximum)
  int32_t top_k = 0;         // 0 = off
  float top_p = 1.0f;        // 1 = off
  float min_p = 0.0f;        // 0 = off
  float repetition_penalty = 1.0f;
  int32_t penalty_begin = 0, penalty_end = 0;  // distinct ids to penalise: penalty_ids[begin, end)
  double u = 0.0;
};

// Row stride of SampleArgs::work: the vocabulary rounded up to 4 floats (16-byte rows).
ANYBIT_HOST_DEVICE inline int64_t sample_work_ld(int64_t vocab) { return (vocab + 3) / 4 * 4; }

struct SampleArgs {
  const float* logits = nullptr;  // [n_rows][ldl]
  int64_t ldl = 0, vocab = 0, n_rows = 0;
  const SampleRow* rows = nullptr;      // device, [n_rows]
  const int32_t* penalty_ids = nullptr;  // device
  float* work = nullptr;                 // device, 16-byte aligned, [n_rows][sample_work_ld(vocab)] scratch
  int32_t* out = nullptr;                // device, [n_rows]
};

// One block per row. Kept set: the tokens whose key is at least the k-th largest (ties at the
// k-th value are all kept), whose probability is at least min_p times the largest, and the
// smallest prefix in descending order whose mass reaches top_p (ties at its last value all
// kept). Masses are summed in 2^-40 fixed point, so results do not depend on the schedule. The
// token is the kept one where the cumulative mass in index order first exceeds u times the
// kept mass: the same distribution as the host's draw in sorted order.
void sample_rows(const SampleArgs& a, cudaStream_t s);

}  // namespace anybit::cuda

#endif  // ANYBIT_WITH_CUDA
