// Token sampling on the GPU (declared in sampling_cuda.h; the host semantics are
// runtime/sampler.cpp's).
//
// Design, and why:
// - One block of 1024 threads per row: a vocabulary of 128k floats is 512 KiB, read from L2
//   a dozen times in all; a sort would cost more than every pass together.
// - Thresholds by radix selection on the order-preserving 32-bit key of each logit, 8 bits
//   per pass: the k-th largest key by counts (top-k), the top-p cut by masses. Four passes
//   each, a 256-bin histogram in shared memory, scanned from the top by one thread.
// - Masses exp((l - max) / T) in [0, 1] are summed as integers of 2^-40 (64-bit atomics and
//   CUB sums), which are associative: the kept set and the token do not depend on the order
//   in which threads add, so a seed replays exactly.
// - The draw walks the kept tokens in index order: each thread sums its contiguous slice,
//   a block scan gives slice offsets, and one thread finds the token in its slice.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cmath>

#include "core/error.h"
#include "kernels/cuda_kernels.h"
#include "kernels/sampling_cuda.h"

namespace anybit::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr double kFix = 1099511627776.0;  // 2^40

// Larger floats give larger keys; NaN gives 0 (never above a number).
__device__ __forceinline__ uint32_t key_of(float f) {
  if (isnan(f)) return 0u;
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Adds `v` to hist[bin] with one atomic per distinct bin of the warp: the high bytes of the
// keys are shared by most of the vocabulary, so per-thread atomics would serialise on a
// handful of bins. `v` < 2^40; its two 20-bit halves are summed per bin with 32-bit
// reductions (at most 32 terms each, so no overflow).
__device__ __forceinline__ void hist_add(unsigned long long* hist, uint32_t bin, unsigned long long v, bool active) {
  const unsigned act = __ballot_sync(0xffffffffu, active);
  if (!active) return;
  const unsigned same = __match_any_sync(act, bin);
  const uint32_t hi = __reduce_add_sync(same, uint32_t(v >> 20)), lo = __reduce_add_sync(same, uint32_t(v & 0xfffffu));
  if ((threadIdx.x & 31) == unsigned(__ffs(same) - 1)) atomicAdd(&hist[bin], (unsigned long long)hi << 20 | lo);
}

struct MaxAt {
  float v;
  int64_t i;
};
struct MaxAtOp {
  __device__ MaxAt operator()(const MaxAt& a, const MaxAt& b) const {
    if (b.v > a.v || (b.v == a.v && b.i < a.i)) return b;  // first index of the maximum
    return a;
  }
};

__global__ void __launch_bounds__(kThreads) sample_kernel(const SampleArgs a) {
  using Reduce = cub::BlockReduce<MaxAt, kThreads>;
  using ReduceU = cub::BlockReduce<unsigned long long, kThreads>;
  using Scan = cub::BlockScan<unsigned long long, kThreads>;
  __shared__ union {
    typename Reduce::TempStorage max;
    typename ReduceU::TempStorage sum;
    typename Scan::TempStorage scan;
  } tmp;
  __shared__ unsigned long long hist[256];
  __shared__ uint32_t s_sel;
  __shared__ unsigned long long s_carry, s_total;
  __shared__ MaxAt s_max;

  const int64_t row = blockIdx.x, V = a.vocab;
  const SampleRow r = a.rows[row];
  const float* lg = a.logits + row * a.ldl;
  float* w = a.work + row * V;
  const int tid = threadIdx.x;

  // 1. Penalised copy (ids are distinct, so each is changed once), then the maximum.
  for (int64_t i = tid; i < V; i += kThreads) w[i] = lg[i];
  __syncthreads();
  if (r.repetition_penalty != 1.0f)
    for (int64_t j = r.penalty_begin + tid; j < r.penalty_end; j += kThreads) {
      const int32_t id = a.penalty_ids[j];
      if (id < 0 || id >= V) continue;
      const float l = w[id];
      w[id] = l > 0 ? l / r.repetition_penalty : l * r.repetition_penalty;
    }
  __syncthreads();
  MaxAt best{-INFINITY, V};
  for (int64_t i = tid; i < V; i += kThreads) {
    const float v = w[i];
    if (v > best.v || (best.i == V && !isnan(v))) best = MaxAt{v, i};
  }
  best = Reduce(tmp.max).Reduce(best, MaxAtOp());
  if (tid == 0) s_max = best;
  __syncthreads();
  best = s_max;
  if (r.temperature == 0.0f || best.i == V) {
    if (tid == 0) a.out[row] = int32_t(best.i == V ? 0 : best.i);
    return;
  }
  const float mx = best.v, inv_t = 1.0f / r.temperature;
  auto mass = [&](float v) { return (unsigned long long)(double(expf((v - mx) * inv_t)) * kFix); };

  // 2. Top-k: the k-th largest key (count histograms, from the top).
  uint32_t tk = 0;
  if (r.top_k > 0 && r.top_k < V) {
    uint32_t prefix = 0, mask = 0;
    unsigned long long remaining = (unsigned long long)r.top_k;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = tid; b < 256; b += kThreads) hist[b] = 0;
      __syncthreads();
      for (int64_t i0 = 0; i0 < V; i0 += kThreads) {  // warp-uniform trip count (hist_add)
        const int64_t i = i0 + tid;
        const uint32_t k = i < V ? key_of(w[i]) : 0u;
        hist_add(hist, (k >> shift) & 255u, 1ull, i < V && (k & mask) == prefix);
      }
      __syncthreads();
      if (tid == 0) {
        unsigned long long cum = 0;
        int b = 255;
        for (; b > 0 && cum + hist[b] < remaining; --b) cum += hist[b];
        s_sel = uint32_t(b), s_carry = remaining - cum;
      }
      __syncthreads();
      prefix |= s_sel << shift, mask |= 255u << shift, remaining = s_carry;
      __syncthreads();
    }
    tk = prefix;
  }

  // 3. Top-p: the largest key whose suffix mass (within top-k) reaches top_p of the total.
  uint32_t tp = 0;
  if (r.top_p < 1.0f) {
    unsigned long long z = 0;
    for (int64_t i = tid; i < V; i += kThreads)
      if (key_of(w[i]) >= tk) z += mass(w[i]);
    z = ReduceU(tmp.sum).Sum(z);
    if (tid == 0) s_total = z;
    __syncthreads();
    const unsigned long long target = (unsigned long long)(double(r.top_p) * double(s_total));
    uint32_t prefix = 0, mask = 0;
    unsigned long long above = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = tid; b < 256; b += kThreads) hist[b] = 0;
      __syncthreads();
      for (int64_t i0 = 0; i0 < V; i0 += kThreads) {
        const int64_t i = i0 + tid;
        const float v = i < V ? w[i] : 0.0f;
        const uint32_t k = i < V ? key_of(v) : 0u;
        const bool in = i < V && k >= tk && (k & mask) == prefix;
        const unsigned long long ms = in ? mass(v) : 0ull;
        hist_add(hist, (k >> shift) & 255u, ms, in && ms > 0);
      }
      __syncthreads();
      if (tid == 0) {
        unsigned long long cum = above;
        int b = 255;
        for (; b > 0 && cum + hist[b] < target; --b) cum += hist[b];
        s_sel = uint32_t(b), s_carry = cum;
      }
      __syncthreads();
      prefix |= s_sel << shift, mask |= 255u << shift, above = s_carry;
      __syncthreads();
    }
    tp = prefix;
  }

  // 4. Draw in index order over the kept tokens. Each warp owns a contiguous slice (read
  // 32 consecutive tokens at a time); slice sums, a scan over the warps, then the warp whose
  // slice holds the target walks it again with an inclusive warp scan.
  const uint32_t cut = tk > tp ? tk : tp;
  const float pmin = r.min_p;  // probabilities relative to the maximum's, exp(0) = 1
  auto kept_mass = [&](int64_t i) -> unsigned long long {
    if (i >= V) return 0ull;
    const float v = w[i];
    return key_of(v) >= cut && expf((v - mx) * inv_t) >= pmin ? mass(v) : 0ull;
  };
  constexpr int kWarps = kThreads / 32;
  const int warp = tid / 32, lane = tid % 32;
  const int64_t per = (V + kWarps * 32 - 1) / (kWarps * 32) * 32, lo = warp * per, hi = lo + per < V ? lo + per : V;
  unsigned long long mine = 0;
  for (int64_t i = lo + lane; i < hi; i += 32) mine += kept_mass(i);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mine += __shfl_xor_sync(0xffffffffu, mine, o);
  unsigned long long offset = 0, total = 0;
  Scan(tmp.scan).ExclusiveSum(lane == 0 ? mine : 0ull, offset, total);
  offset = __shfl_sync(0xffffffffu, offset, 0);  // the warp's exclusive prefix (lane 0's)
  const unsigned long long target = (unsigned long long)(r.u * double(total));
  if (offset <= target && target < offset + mine) {
    unsigned long long cum = offset;
    for (int64_t i0 = lo; i0 < hi; i0 += 32) {
      const unsigned long long ms = kept_mass(i0 + lane);
      unsigned long long inc = ms;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long up = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += up;
      }
      const unsigned over = __ballot_sync(0xffffffffu, ms > 0 && cum + inc > target);
      if (over) {
        if (lane == __ffs(over) - 1) a.out[row] = int32_t(i0 + lane);
        break;
      }
      cum += __shfl_sync(0xffffffffu, inc, 31);
    }
  }
}

}  // namespace

void sample_rows(const SampleArgs& a, cudaStream_t s) {
  if (a.n_rows <= 0) return;
  if (!a.logits || !a.rows || !a.work || !a.out || a.vocab <= 0 || a.ldl < a.vocab)
    fail("CUDA sample_rows: bad arguments (vocab {}, ldl {})", a.vocab, a.ldl);
  sample_kernel<<<unsigned(a.n_rows), kThreads, 0, s>>>(a);
  check_launch("sample_rows");
}

}  // namespace anybit::cuda
