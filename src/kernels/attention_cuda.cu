// Causal attention over the device paged KV cache.
//
// Decode (FlashDecoding): the context of each query row is cut into n_splits ranges, one
// block per (range, kv head, row). A block serves every query head of its kv head (GQA),
// so each K/V row is read once per group rather than once per query head. Warps take
// keys round-robin with a private online softmax; the block merges its warps, and a
// second kernel merges the ranges (skipped when there is one range).
//
// Prefill (FlashAttention-2 style, SIMT): one block per (16 queries, head, sequence);
// K/V tiles of 32 positions go through shared memory, 8 threads own a query row, and the
// softmax is online so scores never leave the block.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/attention_cuda.cuh"
#include "kernels/cuda_common.cuh"

namespace anybit::cuda {
namespace {

using namespace detail;

constexpr int kGMax = kAttnMaxGroup;
constexpr int kDecodeWarps = 4;

// Position p's K (kv = 0) or V (kv = 1) row of kv head kvh.
template <DType D>
__device__ __forceinline__ KvRow<D> kv_at(const AttentionArgs& a, const int32_t* btab, int64_t p, int kv,
                                          int64_t kvh) {
  const int64_t bs = a.kv.block_size;
  return KvRow<D>(a.kv, a.kv.head_offset(btab[p / bs], a.layer, kv, kvh), p % bs);
}

template <DType D, int HDI>
__global__ void __launch_bounds__(kDecodeWarps * 32) attn_decode_kernel(const AttentionArgs a) {
  pdl_wait();
  pdl_trigger();
  const int sp = blockIdx.x;
  const int64_t kvh = blockIdx.y, t = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t hd = a.kv.head_dim, nkv = a.kv.n_kv_heads;
  const int G = int(a.n_heads / nkv);
  const DecodeSplit range = decode_split(a, t, sp);
  if (range.lo >= range.hi) return;  // past the context: the merge does not read this split
  const int64_t lo = range.lo, hi = range.hi;
  const int32_t* btab = a.block_tables + int64_t(a.tok_seq[t]) * a.max_blocks;

  float q[kGMax][HDI], acc[kGMax][HDI], m[kGMax], l[kGMax];
#pragma unroll
  for (int g = 0; g < kGMax; ++g) {
    m[g] = -INFINITY, l[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < HDI; ++i) {
      const int64_t d = lane + 32 * i;
      acc[g][i] = 0.0f;
      q[g][i] = (g < G && d < hd) ? a.q[t * a.ldq + (kvh * G + g) * hd + d] : 0.0f;
    }
  }
  // Each warp loads KU keys (and values) before using any, so several row fetches are in
  // flight per warp instead of one dependent load per key.
  constexpr int KU = 4;
  for (int64_t j0 = lo + warp; j0 < hi; j0 += kDecodeWarps * KU) {
    float kk[KU][HDI], vv[KU][HDI];
#pragma unroll
    for (int u = 0; u < KU; ++u) {
      const int64_t j = j0 + int64_t(u) * kDecodeWarps;
      const bool live = j < hi;
      const KvRow<D> kr = kv_at<D>(a, btab, live ? j : lo, 0, kvh), vr = kv_at<D>(a, btab, live ? j : lo, 1, kvh);
#pragma unroll
      for (int i = 0; i < HDI; ++i) {
        const int64_t d = lane + 32 * i;
        kk[u][i] = (live && d < hd) ? kr[d] : 0.0f;
        vv[u][i] = (live && d < hd) ? vr[d] : 0.0f;
      }
    }
#pragma unroll
    for (int u = 0; u < KU; ++u) {
      if (j0 + int64_t(u) * kDecodeWarps >= hi) break;
#pragma unroll
      for (int g = 0; g < kGMax; ++g) {
        if (g >= G) break;
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < HDI; ++i) s = fmaf(q[g][i], kk[u][i], s);
        s = warp_sum(s) * a.scale;
        if (s > m[g]) {
          const float r = expf(m[g] - s);
          l[g] *= r;
#pragma unroll
          for (int i = 0; i < HDI; ++i) acc[g][i] *= r;
          m[g] = s;
        }
        const float p = expf(s - m[g]);
        l[g] += p;
#pragma unroll
        for (int i = 0; i < HDI; ++i) acc[g][i] = fmaf(p, vv[u][i], acc[g][i]);
      }
    }
  }

  __shared__ float s_m[kDecodeWarps][kGMax], s_l[kDecodeWarps][kGMax];
  __shared__ float s_acc[kDecodeWarps][kGMax][32 * HDI];
#pragma unroll
  for (int g = 0; g < kGMax; ++g) {
    if (lane == 0) s_m[warp][g] = m[g], s_l[warp][g] = l[g];
#pragma unroll
    for (int i = 0; i < HDI; ++i) s_acc[warp][g][lane + 32 * i] = acc[g][i];
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < int64_t(G) * hd; e += blockDim.x) {
    const int g = int(e / hd);
    const int64_t d = e % hd, h = kvh * G + g;
    float M = -INFINITY;
    for (int w = 0; w < kDecodeWarps; ++w) M = fmaxf(M, s_m[w][g]);
    float L = 0.0f, A = 0.0f;
    if (M != -INFINITY)
      for (int w = 0; w < kDecodeWarps; ++w) {
        if (s_m[w][g] == -INFINITY) continue;
        const float f = expf(s_m[w][g] - M);
        L += s_l[w][g] * f;
        A += s_acc[w][g][d] * f;
      }
    if (range.n_active == 1) {
      a.out[t * a.ldo + h * hd + d] = A / L;
    } else {
      float* P = a.partial + ((t * a.n_heads + h) * a.n_splits + sp) * (hd + 2);
      P[2 + d] = A;
      if (d == 0) P[0] = M, P[1] = L;
    }
  }
}

// One block per (row, head) over the row's n_active splits (decode_split). Up to 8 splits,
// thread d merges column d alone from one round of loads. More splits: the split weights
// exp(M_s - M) are computed once into shared memory (n_splits + 4 floats of dynamic shared
// memory), then thread d sums its column over the splits with 8 independent loads in flight.
// A row with one active split was written by the decode kernel, and its blocks return at once.
__global__ void __launch_bounds__(128) attn_combine_kernel(const AttentionArgs a) {
  extern __shared__ float s_w[];
  __shared__ float s_red[4];
  const int64_t t = blockIdx.x / a.n_heads, h = blockIdx.x % a.n_heads, hd = a.kv.head_dim, stride = hd + 2;
  const float* P = a.partial + int64_t(blockIdx.x) * a.n_splits * stride;
  const int64_t n = decode_split(a, t, 0).n_active;  // positions are metadata: read before the wait
  pdl_wait();
  pdl_trigger();
  if (n <= 1) return;  // block-uniform
  // Up to kFew splits (a context of up to 128 positions at the shortest split), each thread
  // reads every split's (max, sum) and its own column's partials in one round trip and merges
  // them itself: no shared memory, no barrier between two dependent reads.
  constexpr int kFew = 8;
  if (n <= kFew) {
    const int64_t d = threadIdx.x;
    if (d >= hd) return;
    float mv[kFew], lv[kFew], pv[kFew];
#pragma unroll
    for (int sp = 0; sp < kFew; ++sp) {
      mv[sp] = -INFINITY, lv[sp] = pv[sp] = 0.0f;
      if (sp < n) mv[sp] = P[sp * stride], lv[sp] = P[sp * stride + 1], pv[sp] = P[sp * stride + 2 + d];
    }
    float M = -INFINITY;
#pragma unroll
    for (int sp = 0; sp < kFew; ++sp)
      if (sp < n) M = fmaxf(M, mv[sp]);
    float L = 0.0f, A = 0.0f;
#pragma unroll
    for (int sp = 0; sp < kFew; ++sp)
      if (sp < n && mv[sp] != -INFINITY) {
        const float w = expf(mv[sp] - M);
        L = fmaf(w, lv[sp], L), A = fmaf(w, pv[sp], A);
      }
    a.out[t * a.ldo + h * hd + d] = A / L;
    return;
  }
  // More splits: each thread's first split's (max, sum) is requested at once; values of splits
  // past the active ones (stale) are never used.
  float m0 = -INFINITY, l0 = 0.0f;
  if (threadIdx.x < a.n_splits) m0 = P[threadIdx.x * stride], l0 = P[threadIdx.x * stride + 1];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float mx = -INFINITY;
  for (int64_t sp = threadIdx.x; sp < n; sp += blockDim.x) mx = fmaxf(mx, sp == threadIdx.x ? m0 : P[sp * stride]);
  mx = warp_max(mx);
  if (lane == 0) s_red[warp] = mx;
  __syncthreads();
  const float M = fmaxf(fmaxf(s_red[0], s_red[1]), fmaxf(s_red[2], s_red[3]));
  __syncthreads();  // s_red is reused for the sum
  float lsum = 0.0f;
  for (int64_t sp = threadIdx.x; sp < n; sp += blockDim.x) {
    const float m = sp == threadIdx.x ? m0 : P[sp * stride], l = sp == threadIdx.x ? l0 : P[sp * stride + 1];
    const float w = m == -INFINITY ? 0.0f : expf(m - M);
    s_w[sp] = w;
    lsum += w * l;
  }
  lsum = warp_sum(lsum);
  if (lane == 0) s_red[warp] = lsum;
  __syncthreads();
  const float L = s_red[0] + s_red[1] + s_red[2] + s_red[3];
  constexpr int kU = 8;
  for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) acc[u] = 0.0f;
    int64_t sp = 0;
    for (; sp + kU <= n; sp += kU)
#pragma unroll
      for (int u = 0; u < kU; ++u) acc[u] += s_w[sp + u] * P[(sp + u) * stride + 2 + d];
    for (; sp < n; ++sp) acc[0] += s_w[sp] * P[sp * stride + 2 + d];
    float sum = 0.0f;
#pragma unroll
    for (int u = 0; u < kU; ++u) sum += acc[u];
    a.out[t * a.ldo + h * hd + d] = sum / L;
  }
}

constexpr int BQ = 16, BKV = 32, kPrefillThreads = 128;

template <DType D, int HDP>
__global__ void __launch_bounds__(kPrefillThreads) attn_prefill_kernel(const AttentionArgs a) {
  __shared__ float Qs[BQ][HDP + 1], Ks[BKV][HDP + 1], Vs[BKV][HDP], Ps[BQ][BKV + 1];
  pdl_wait();
  pdl_trigger();
  const int64_t seq = blockIdx.z, h = blockIdx.y;
  const int64_t nq = a.seq_nq[seq];
  if (int64_t(blockIdx.x) * BQ >= nq) return;
  const int64_t q0 = a.seq_qstart[seq] + int64_t(blockIdx.x) * BQ;
  const int nrows = int(min(int64_t(BQ), nq - int64_t(blockIdx.x) * BQ));
  const int64_t hd = a.kv.head_dim, nkv = a.kv.n_kv_heads, kvh = h / (a.n_heads / nkv);
  const int32_t* btab = a.block_tables + seq * a.max_blocks;
  const int tid = threadIdx.x, r = tid / 8, sub = tid % 8;

  const int64_t first = a.tok_pos[q0], last = a.tok_pos[q0 + nrows - 1];
  const int64_t kstart = a.window > 0 ? max(int64_t(0), first + 1 - a.window) : 0;
  const int64_t kend = last + 1;
  for (int e = tid; e < BQ * HDP; e += kPrefillThreads) {
    const int qr = e / HDP, d = e % HDP;
    Qs[qr][d] = (qr < nrows && d < hd) ? a.q[(q0 + qr) * a.ldq + h * hd + d] : 0.0f;
  }
  const int64_t qpos = r < nrows ? int64_t(a.tok_pos[q0 + r]) : -1;
  const int64_t qlo = a.window > 0 ? qpos + 1 - a.window : 0;

  constexpr int DI = HDP / 8;
  float acc[DI];
#pragma unroll
  for (int k = 0; k < DI; ++k) acc[k] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  for (int64_t kt0 = kstart - kstart % BKV; kt0 < kend; kt0 += BKV) {
    __syncthreads();  // the previous tile is no longer read
    for (int e = tid; e < BKV * HDP; e += kPrefillThreads) {
      const int j = e / HDP, d = e % HDP;
      const int64_t p = kt0 + j;
      float kv = 0.0f, vv = 0.0f;
      if (p < kend && d < hd) {
        kv = kv_at<D>(a, btab, p, 0, kvh)[d];
        vv = kv_at<D>(a, btab, p, 1, kvh)[d];
      }
      Ks[j][d] = kv;
      Vs[j][d] = vv;
    }
    __syncthreads();
    float s[4];
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int c = sub + 8 * i;
      const int64_t kp = kt0 + c;
      const bool valid = qpos >= 0 && kp <= qpos && kp >= qlo;
      float d0 = 0.0f;
#pragma unroll 8
      for (int d = 0; d < HDP; ++d) d0 = fmaf(Qs[r][d], Ks[c][d], d0);
      s[i] = valid ? d0 * a.scale : -INFINITY;
      mx = fmaxf(mx, s[i]);
    }
#pragma unroll
    for (int o = 4; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    const float m_new = fmaxf(m, mx);
    float psum = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float p = s[i] == -INFINITY ? 0.0f : expf(s[i] - m_new);
      Ps[r][sub + 8 * i] = p;
      psum += p;
    }
#pragma unroll
    for (int o = 4; o > 0; o >>= 1) psum += __shfl_xor_sync(0xffffffffu, psum, o);
    const float scale_old = m == -INFINITY ? 0.0f : expf(m - m_new);
    l = l * scale_old + psum;
    m = m_new;
    __syncwarp();
#pragma unroll
    for (int k = 0; k < DI; ++k) acc[k] *= scale_old;
    for (int c = 0; c < BKV; ++c) {
      const float p = Ps[r][c];
#pragma unroll
      for (int k = 0; k < DI; ++k) acc[k] = fmaf(p, Vs[c][sub + 8 * k], acc[k]);
    }
  }
  if (r < nrows)
#pragma unroll
    for (int k = 0; k < DI; ++k) {
      const int64_t d = sub + 8 * k;
      if (d < hd) a.out[(q0 + r) * a.ldo + h * hd + d] = acc[k] / l;
    }
}

void check_shape(const AttentionArgs& a, const char* what) {
  const int64_t hd = a.kv.head_dim;
  if (hd <= 0 || hd > kMaxHeadDim) fail("CUDA {}: head_dim {} is not supported (1..{})", what, hd, kMaxHeadDim);
  if (a.kv.n_kv_heads <= 0 || a.n_heads % a.kv.n_kv_heads != 0)
    fail("CUDA {}: {} heads do not group over {} kv heads", what, a.n_heads, a.kv.n_kv_heads);
}

}  // namespace

void decode_splits(int64_t max_ctx, int64_t& n_splits, int64_t& split_len) {
  split_len = std::max<int64_t>(64, ((max_ctx + 63) / 64 + 15) / 16 * 16);
  n_splits = std::max<int64_t>(1, (max_ctx + split_len - 1) / split_len);
}

void check_kv_dtype(DType dtype, const char* what) {
  if (dtype != DType::F32 && dtype != DType::F16 && dtype != DType::BF16 && dtype != DType::I8)
    fail("CUDA {}: a KV cache of {} is not supported (f32, f16, bf16 or i8)", what, dtype_name(dtype));
}

void attention_combine(const AttentionArgs& a, cudaStream_t s) {
  // 4 floats of slack: the compiler may read the weights of the last splits as one vector.
  launch_pdl(attn_combine_kernel, dim3(unsigned(a.n_tok * a.n_heads)), dim3(128), size_t(a.n_splits + 4) * 4, s, a);
  check_launch("attention_combine");
}

namespace {

template <DType D>
void launch_decode_simt(const AttentionArgs& a, cudaStream_t s) {
  const dim3 grid(unsigned(a.n_splits), unsigned(a.kv.n_kv_heads), unsigned(a.n_tok));
  const unsigned th = kDecodeWarps * 32;
  switch ((a.kv.head_dim + 31) / 32) {
    case 1: launch_pdl(attn_decode_kernel<D, 1>, grid, dim3(th), 0, s, a); break;
    case 2: launch_pdl(attn_decode_kernel<D, 2>, grid, dim3(th), 0, s, a); break;
    case 3: launch_pdl(attn_decode_kernel<D, 3>, grid, dim3(th), 0, s, a); break;
    default: launch_pdl(attn_decode_kernel<D, 4>, grid, dim3(th), 0, s, a); break;
  }
}

template <DType D>
void launch_prefill(const AttentionArgs& a, cudaStream_t s) {
  const dim3 grid(unsigned((a.max_nq + BQ - 1) / BQ), unsigned(a.n_heads), unsigned(a.n_seq));
  switch ((a.kv.head_dim + 31) / 32) {
    case 1: attn_prefill_kernel<D, 32><<<grid, kPrefillThreads, 0, s>>>(a); break;
    case 2: attn_prefill_kernel<D, 64><<<grid, kPrefillThreads, 0, s>>>(a); break;
    case 3: attn_prefill_kernel<D, 96><<<grid, kPrefillThreads, 0, s>>>(a); break;
    default: attn_prefill_kernel<D, 128><<<grid, kPrefillThreads, 0, s>>>(a); break;
  }
}

}  // namespace

void check_decode_args(const AttentionArgs& a) {
  check_shape(a, "attention_decode");
  check_kv_dtype(a.kv.dtype, "attention_decode");
  if (a.n_heads / a.kv.n_kv_heads > kGMax)
    fail("CUDA attention_decode: {} query heads per kv head (at most {})", a.n_heads / a.kv.n_kv_heads, kGMax);
  if (a.n_splits > 1 && !a.partial) fail("CUDA attention_decode: {} splits need a workspace", a.n_splits);
}

void attention_decode_simt(const AttentionArgs& a, cudaStream_t s) {
  if (a.n_tok <= 0) return;
  check_decode_args(a);
  if (a.rope_inv_freq) fail("CUDA attention_decode: fused RoPE needs the tensor-core kernel (f16/bf16/i8 cache)");
  switch (a.kv.dtype) {
    case DType::F16: launch_decode_simt<DType::F16>(a, s); break;
    case DType::BF16: launch_decode_simt<DType::BF16>(a, s); break;
    case DType::I8: launch_decode_simt<DType::I8>(a, s); break;
    default: launch_decode_simt<DType::F32>(a, s); break;
  }
  check_launch("attention_decode");
  if (a.n_splits > 1) attention_combine(a, s);
}

void attention_decode(const AttentionArgs& a, cudaStream_t s) {
  if (a.n_tok > 0 && attention_decode_mma_supported(a)) attention_decode_mma(a, s);
  else attention_decode_simt(a, s);
}

void attention_prefill(const AttentionArgs& a, cudaStream_t s) {
  if (a.n_seq <= 0 || a.max_nq <= 0) return;
  check_shape(a, "attention_prefill");
  check_kv_dtype(a.kv.dtype, "attention_prefill");
  switch (a.kv.dtype) {
    case DType::F16: launch_prefill<DType::F16>(a, s); break;
    case DType::BF16: launch_prefill<DType::BF16>(a, s); break;
    case DType::I8: launch_prefill<DType::I8>(a, s); break;
    default: launch_prefill<DType::F32>(a, s); break;
  }
  check_launch("attention_prefill");
}

}  // namespace anybit::cuda
