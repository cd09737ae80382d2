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
constexpr int kU = 4;  // float4 loads in flight per thread
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

// Calls f(i, v, valid) for every element of the padded row w (16-byte aligned), with kU
// float4 loads per thread issued before the first use (a loop of single loads waits on L2
// once per element). The trip count is the same for every thread, so f may use warp
// collectives; `valid` is false past the vocabulary.
template <typename F>
__device__ __forceinline__ void for_each(const float* w, int64_t V, F&& f) {
  const int64_t n4 = (V + 3) / 4;
  for (int64_t j0 = 0; j0 < n4; j0 += int64_t(kThreads) * kU) {
    float4 v[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t j = j0 + int64_t(u) * kThreads + threadIdx.x;
      v[u] = j < n4 ? reinterpret_cast<const float4*>(w)[j] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t i = 4 * (j0 + int64_t(u) * kThreads + threadIdx.x);
      f(i, v[u].x, i < V), f(i + 1, v[u].y, i + 1 < V), f(i + 2, v[u].z, i + 2 < V), f(i + 3, v[u].w, i + 3 < V);
    }
  }
}

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

  const int64_t row = blockIdx.x, V = a.vocab, ldw = sample_work_ld(V);
  const SampleRow r = a.rows[row];
  const float* lg = a.logits + row * a.ldl;
  float* w = a.work + row * ldw;
  const int tid = threadIdx.x;

  // 1. Penalised copy (ids are distinct, so each is changed once; the pad is zeroed), then
  //    the maximum.
  for (int64_t i0 = 0; i0 < ldw; i0 += int64_t(kThreads) * 8) {
    float v[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const int64_t i = i0 + int64_t(u) * kThreads + tid;
      v[u] = i < V ? lg[i] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const int64_t i = i0 + int64_t(u) * kThreads + tid;
      if (i < ldw) w[i] = v[u];
    }
  }
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
  for_each(w, V, [&](int64_t i, float v, bool ok) {
    if (ok && (v > best.v || (best.i == V && !isnan(v)))) best = MaxAt{v, i};
  });
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
      for_each(w, V, [&](int64_t, float v, bool ok) {
        const uint32_t k = key_of(v);
        hist_add(hist, (k >> shift) & 255u, 1ull, ok && (k & mask) == prefix);
      });
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
    for_each(w, V, [&](int64_t, float v, bool ok) {
      if (ok && key_of(v) >= tk) z += mass(v);
    });
    z = ReduceU(tmp.sum).Sum(z);
    if (tid == 0) s_total = z;
    __syncthreads();
    unsigned long long target = (unsigned long long)(double(r.top_p) * double(s_total));
    if (target == 0) target = 1;
    uint32_t prefix = 0, mask = 0;
    unsigned long long above = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = tid; b < 256; b += kThreads) hist[b] = 0;
      __syncthreads();
      for_each(w, V, [&](int64_t, float v, bool ok) {
        const uint32_t k = key_of(v);
        const bool in = ok && k >= tk && (k & mask) == prefix;
        const unsigned long long ms = in ? mass(v) : 0ull;
        hist_add(hist, (k >> shift) & 255u, ms, in && ms > 0);
      });
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

  // 4. Draw in index order over the kept tokens. Each warp owns a contiguous slice, read as
  //    float4 per lane (128 tokens per warp step, kU steps in flight); slice sums, a scan
  //    over the warps, then the warp whose slice holds the target walks it again.
  const uint32_t cut = tk > tp ? tk : tp;
  const float pmin = r.min_p;  // probabilities relative to the maximum's, exp(0) = 1
  auto kept_mass = [&](float v, bool ok) -> unsigned long long {
    return ok && key_of(v) >= cut && expf((v - mx) * inv_t) >= pmin ? mass(v) : 0ull;
  };
  constexpr int kWarps = kThreads / 32, kStep = 128;
  const int warp = tid / 32, lane = tid % 32;
  const int64_t per = (V + kWarps * kStep - 1) / (kWarps * kStep) * kStep;
  const int64_t lo = warp * per, hi = lo + per < V ? lo + per : V;
  // The lane's four tokens of the step at s, with their masses.
  auto step_masses = [&](int64_t s, unsigned long long (&m)[4]) {
    const int64_t i = s + 4 * lane;
    const float4 v = i < hi ? *reinterpret_cast<const float4*>(w + i) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    m[0] = kept_mass(v.x, i < hi), m[1] = kept_mass(v.y, i + 1 < hi);
    m[2] = kept_mass(v.z, i + 2 < hi), m[3] = kept_mass(v.w, i + 3 < hi);
  };
  unsigned long long mine = 0;
  for (int64_t s0 = lo; s0 < hi; s0 += kStep * kU) {
    unsigned long long m[kU][4];
#pragma unroll
    for (int u = 0; u < kU; ++u) step_masses(s0 + u * kStep, m[u]);
#pragma unroll
    for (int u = 0; u < kU; ++u) mine += m[u][0] + m[u][1] + m[u][2] + m[u][3];
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mine += __shfl_xor_sync(0xffffffffu, mine, o);
  unsigned long long offset = 0, total = 0;
  Scan(tmp.scan).ExclusiveSum(lane == 0 ? mine : 0ull, offset, total);
  offset = __shfl_sync(0xffffffffu, offset, 0);  // the warp's exclusive prefix (lane 0's)
  const unsigned long long target = (unsigned long long)(r.u * double(total));
  if (offset <= target && target < offset + mine) {
    unsigned long long cum = offset;
    for (int64_t s = lo; s < hi; s += kStep) {
      unsigned long long m[4];
      step_masses(s, m);
      const unsigned long long own = m[0] + m[1] + m[2] + m[3];
      unsigned long long inc = own;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long up = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += up;
      }
      const unsigned over = __ballot_sync(0xffffffffu, own > 0 && cum + inc > target);
      if (over) {
        if (lane == __ffs(over) - 1) {
          unsigned long long c = cum + inc - own;
          int e = 0;
          for (; e < 3; ++e) {
            c += m[e];
            if (m[e] > 0 && c > target) break;
          }
          a.out[row] = int32_t(s + 4 * lane + e);
        }
        break;
      }
      cum += __shfl_sync(0xffffffffu, inc, 31);
    }
  }
}

}  // namespace

void sample_rows(const SampleArgs& a, cudaStream_t s) {
  if (a.n_rows <= 0) return;
  if (!a.logits || !a.rows || !a.work || !a.out || a.vocab <= 0 || a.ldl < a.vocab ||
      (reinterpret_cast<uintptr_t>(a.work) & 15) != 0)
    fail("CUDA sample_rows: bad arguments (vocab {}, ldl {})", a.vocab, a.ldl);
  sample_kernel<<<unsigned(a.n_rows), kThreads, 0, s>>>(a);
  check_launch("sample_rows");
}

}  // namespace anybit::cuda
