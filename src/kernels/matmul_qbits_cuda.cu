// W{2..8}A16 GEMV on the QBITS any-bit format (layout: kernels/qbits_cuda_pack.h), decode
// path (m <= 4 per launch): fp16 activations and products, fp32 across chunks.
//
// Design, and why:
// - At 4 bits one FP32 FMA per weight, plus the field-to-float conversion, is near the
//   SM's issue limit at the HBM rate (about 21 weights per clock per SM at 80% of the
//   bandwidth). So the inner loop works on f16x2: one LOP3 places two codes (columns 2p
//   and 2p+1 of a chunk, stored at the same bit of the two 16-bit halves of a word) under
//   the exponent of 1024, one HFMA2 turns them into q - round(z) exactly (all integers
//   below 2048), one HFMA2 per row of x multiplies by (x[2p], x[2p+1]) and accumulates.
//   Planes of one code (e.g. 6 = 4 + 2 bits) are OR-ed together before the conversion.
// - x is op(x) (RMSNorm's weight, SiLU·mul, 1/input_scale applied; RMSNorm's 1/rms is a
//   scalar and is applied to the result instead) staged once per block in shared memory
//   as f16, scaled by a power of two 2^-e so that |x| <= 1: then a chunk's 16-pair f16 sum
//   is at most 16 * 255 * 2 in magnitude (no overflow at 8 bits) and the scaling is exact.
//   Per chunk the half2 sum goes to fp32 and is scaled by the group's scale; the
//   fractional part of an asymmetric zero is applied as -s * frac(z) * sum(x) with the
//   chunk sums of x staged beside x.
// - A warp owns kR = 4 output rows, so each x value read from shared memory serves four
//   rows, and lane l the chunks l, l+32, ... of them: one 16/8/4-byte load per row and
//   plane, consecutive lanes at consecutive addresses, the next chunk (possibly of the
//   warp's next row group) loaded before the current one is used, the first ones before
//   waiting on the previous kernel (programmatic dependent launch).
// - Blocks loop over row groups (a persistent grid of at most as many blocks as fit on
//   the GPU), so x is staged once per block, not once per 32 rows. When there are too few
//   row groups to fill the GPU, K is split over ks = 2..8 warps of a block instead
//   (partial sums combined in shared memory; one row group per warp, no loop).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#include "core/error.h"
#include "kernels/cuda_common.cuh"
#include "kernels/qbits_cuda_common.cuh"
#include "kernels/qbits_cuda_pack.h"

namespace anybit::cuda {
namespace {

using namespace detail;
using namespace qdetail;

// Threads per block. m = 1: 512, one block per SM, so x is staged once per SM (two blocks
// of 256 staged it twice: the 8B W4 decode went from 326 to 369 t/s on an H100). m > 1:
// 256, one block per SM with up to 255 registers (512 threads would cap them at 128 and spill).
template <int M>
__host__ __device__ constexpr int gemv_threads() { return M == 1 ? 512 : 256; }
constexpr int kR = 4;                  // output rows per warp
static_assert(kQbitsPadRows >= kR - 1, "the last row group reads up to kR - 1 rows past N");
constexpr int kChunkWords = 20;        // 16 half2 of x per chunk + 4 words of padding
constexpr size_t kMaxSmem = 220 * 1024;  // below the 227 KiB opt-in limit of sm_90

// Sum over the 16 pairs of one chunk, for kR rows and M rows of x: acc[r][i] (half2).
// Independent f16 accumulators per (row, x row): two at m = 1 so that the dependent HFMA2
// chains are short enough to keep issuing; at m > 1 the M rows of x already give that.
template <int M>
__host__ __device__ constexpr int acc_banks() { return M == 1 ? 2 : 1; }

template <int BITS, int M, int PI>
__device__ __forceinline__ void chunk_pairs(const Chunk<BITS> (&c)[kR], const __half2 (&nz)[kR], const uint4 (&xq)[M],
                                            __half2 (&acc)[acc_banks<M>()][kR][M]) {
  constexpr int P = code_pos(BITS, PI);
  const __half2 scale = h2_const(h_pow2_neg(P));
#pragma unroll
  for (int r = 0; r < kR; ++r) {
    // (1024 + q 2^P) 2^-P - 2^(10-P) - round(z) = q - round(z), exact in f16.
    const __half2 off = __hadd2(h2_const(h_neg_pow2(10 - P)), nz[r]);
    const __half2 v = __hfma2(as_h2(pair_bits<BITS, PI>(c[r].w)), scale, off);
#pragma unroll
    for (int i = 0; i < M; ++i) {
      const uint32_t xw = (PI % 4 == 0) ? xq[i].x : (PI % 4 == 1) ? xq[i].y : (PI % 4 == 2) ? xq[i].z : xq[i].w;
      acc[PI % acc_banks<M>()][r][i] = __hfma2(as_h2(xw), v, acc[PI % acc_banks<M>()][r][i]);
    }
  }
}

template <int BITS, int M, int PB>
__device__ __forceinline__ void chunk_block(const Chunk<BITS> (&c)[kR], const __half2 (&nz)[kR], const uint32_t* xs,
                                            int64_t xs_ld, __half2 (&acc)[acc_banks<M>()][kR][M]) {
  uint4 xq[M];
#pragma unroll
  for (int i = 0; i < M; ++i) xq[i] = *reinterpret_cast<const uint4*>(xs + i * xs_ld + 4 * PB);
  chunk_pairs<BITS, M, 4 * PB + 0>(c, nz, xq, acc);
  chunk_pairs<BITS, M, 4 * PB + 1>(c, nz, xq, acc);
  chunk_pairs<BITS, M, 4 * PB + 2>(c, nz, xq, acc);
  chunk_pairs<BITS, M, 4 * PB + 3>(c, nz, xq, acc);
}

// Chunk steps in flight per lane. Two, so that m = 1 fits in 128 registers with 16 warps
// per SM: the inner loop is latency-bound per warp (dependent HFMA2s, shared-memory loads),
// so warps to switch between matter more than a deeper ring.
constexpr int kRing = 2;

// Every lane holds every total after the butterfly sums; lane r*M + i writes (r, i), or
// with SiLU pairs lane j*M + i writes silu(gate_j) * up_j from rows 2j, 2j+1 (kR is even
// and n0 a multiple of kR, so pairs never split).
template <int M>
__device__ __forceinline__ void write_out(const QParams& p, int64_t n0, int lane, const float (&acc)[kR][M],
                                          const float (&yscale)[M]) {
  if (!p.pair) {
    if (lane >= kR * M) return;
    const int r = lane / M, i = lane % M;
    float v = 0.0f;
#pragma unroll
    for (int rr = 0; rr < kR; ++rr)
#pragma unroll
      for (int ii = 0; ii < M; ++ii)
        if (rr == r && ii == i) v = acc[rr][ii];
    const int64_t n = n0 + r;
    if (n < p.N && i < p.m) {
      v *= yscale[i];
      if (p.bias) v += p.bias[n];
      float* yp = p.y + i * p.ldy + n;
      if (p.accumulate) v += *yp;
      *yp = v;
    }
  } else if (lane < (kR / 2) * M) {
    const int jj = lane / M, i = lane % M;
    float g = 0.0f, u = 0.0f;
#pragma unroll
    for (int rr = 0; rr < kR / 2; ++rr)
#pragma unroll
      for (int ii = 0; ii < M; ++ii)
        if (rr == jj && ii == i) g = acc[2 * rr][ii], u = acc[2 * rr + 1][ii];
    const int64_t n = n0 + 2 * jj;
    if (n + 1 < p.N && i < p.m) {
      g *= yscale[i], u *= yscale[i];
      if (p.bias) g += p.bias[n], u += p.bias[n + 1];
      p.y[i * p.ldy + n / 2] = silu(g) * u;
    }
  }
}

// ASYM: per-group zero points (p.asym). Symmetric weights have the zero 2^(BITS-1) as a
// compile-time constant, so their per-row zero arithmetic and zero loads disappear.
template <int BITS, int M, InputOp OP, bool ASYM>
__global__ void __launch_bounds__(gemv_threads<M>(), 1) qbits_gemv_kernel(const QParams p) {
  constexpr int kQThreads = gemv_threads<M>(), kQWarps = kQThreads / 32;
  extern __shared__ uint4 s_dyn[];
  uint32_t* xs = reinterpret_cast<uint32_t*>(s_dyn);        // [M][nch][kChunkWords]
  float* sxs = reinterpret_cast<float*>(xs + M * p.nch * kChunkWords);  // [M][nch] chunk sums of x' (asym)
  float* cs = sxs + M * p.nch;                                           // [M][nch] 2^e of each chunk
  __shared__ float s_red[kQWarps][kR][M];
  __shared__ float s_part[kQWarps][M];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wpb = kQWarps / p.ks;  // row groups per block step
  const int ksi = warp % p.ks;
  const int q_begin = int(ksi * p.nch / p.ks), q_end = int((ksi + 1) * p.nch / p.ks);
  // This warp's work: items t = (row group rg0 + (t / T) * stride, chunk step t % T), T the
  // chunk steps of a K slice (the same for every lane; lanes past q_end skip their compute).
  const int T = (q_end - q_begin + 31) / 32;
  // Row-group slot s of block b starts at s * grid + b: consecutive row groups go to
  // different blocks, so a matrix with fewer row groups than resident warps still spreads
  // over every SM (with contiguous slots the 8B q|k|v ran on 96 of 132 SMs).
  const int64_t rg_stride = int64_t(gridDim.x) * wpb;
  const int64_t rg0 = p.spread ? int64_t(warp / p.ks) * gridDim.x + blockIdx.x : int64_t(blockIdx.x) * wpb + warp / p.ks;
  const int total = rg0 < p.groups ? int((p.groups - 1 - rg0) / rg_stride + 1) * T : 0;

  // The fetch cursor, in 32-bit indices (check_weight keeps N * nch below 2^31): row * nch and
  // row * G of the first of the kR rows being fetched, the lane's chunk q and its group q / cpg,
  // advanced by additions. The last row group may reach past N into the kR - 1 zero rows that
  // upload_qbits pads every matrix with (their results are not written); chunks past q_end read
  // chunk q_end - 1 (their products are skipped), so no load needs a predicate.
  // Before, the 64-bit row clamps, multiplies and the division q / cpg of every row's load
  // took about 190 of the 510 instructions of a 4-row chunk step (8B gate|up, H100 SASS).
  const uint32_t nchu = uint32_t(p.nch), Gu = uint32_t(p.G), cpgu = uint32_t(p.cpg);
  const int q0 = q_begin + lane, q_last = max(q_end - 1, 0);
  // Groups of 1, 2, 4 or 8 chunks: q / cpg grows by 32 / cpg per step; others divide.
  const int cpg_shift = p.cpg_shift;
  const uint32_t qg0 = uint32_t(q0) / cpgu, qg_last = uint32_t(q_last) / cpgu;
  uint32_t f_row = 0, f_grp = 0;
  int f_q = q0, fj = 0, fetched = 0;
  uint32_t f_qg = qg0;
  int64_t frg = rg0;
  // frg is past the last row group only for a warp without work, which loads nothing; the
  // clamp keeps its unused indices in range.
  auto set_rows = [&] {
    const uint32_t row = uint32_t((frg < p.groups ? frg : p.groups - 1) * kR);
    f_row = row * nchu, f_grp = row * Gu;
  };
  set_rows();
  auto fetch_next = [&](Chunk<BITS>(&c)[kR]) {
    // Past the warp's work nothing is loaded (a warp-uniform branch): with 2 steps in flight
    // and as few as 4 steps per warp (1B shape), redundant loads cost 1.8% of the 1B decode.
    if (fetched >= total) return;
    const bool in = f_q <= q_last;
    const uint32_t rc = f_row + uint32_t(in ? f_q : q_last), gi = f_grp + (in ? f_qg : qg_last);
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      load_planes<BITS>(p, int64_t(rc + r * nchu), c[r]);
      c[r].s = group_meta(p.scales, p.scales_f16, gi + r * Gu);
      if constexpr (ASYM) c[r].z = group_meta(p.zeros, p.zeros_f16, gi + r * Gu);
    }
    if (++fetched < total) {
      f_q += 32;
      f_qg = cpg_shift >= 0 ? f_qg + (32u >> cpg_shift) : uint32_t(f_q) / cpgu;
      if (++fj == T) fj = 0, f_q = q0, f_qg = qg0, frg += rg_stride, set_rows();
    }
  };

  // Weights are never written by earlier kernels: the first D chunk steps are requested
  // before waiting, so their DRAM latency overlaps the previous kernel and the staging.
  constexpr int D = kRing;
  Chunk<BITS> buf[D][kR];
#pragma unroll
  for (int st = 0; st < D; ++st) fetch_next(buf[st]);

  pdl_wait();
  pdl_trigger();

  // Stage op(x) as f16 in one pass (rows >= m as zeros): each 32-column chunk scaled by
  // its own power of two 2^-e (e from the chunk's max |x|, so |x'| < 1 and the scaling is
  // exact), 2^e kept beside it. The 16 lanes that hold a chunk's pairs agree on e with
  // four shuffles, so no block-wide reduction stands between the x loads and the stores.
  // x is read in batches of kU pairs per thread, every load issued before the first use
  // (x sits in L2 after the previous kernel: one round trip per batch, not per pair).
  constexpr int kU = 8;
  const int K = int(p.K);
  float ys[M];
  {
    float ss[M];
#pragma unroll
    for (int i = 0; i < M; ++i) {
      ss[i] = 0.0f;
      for (int b0 = 0; b0 < K; b0 += 2 * kQThreads * kU) {
        float2 v[kU], raw[kU];
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          const int c = b0 + 2 * kQThreads * u + 2 * int(threadIdx.x);
          v[u] = raw[u] = make_float2(0.0f, 0.0f);
          if (i < p.m && c < K) v[u] = op_x2<OP>(p, i, c, raw[u]);
        }
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          if (b0 + 2 * kQThreads * u >= K) break;  // block-uniform
          const int c = b0 + 2 * kQThreads * u + 2 * int(threadIdx.x);
          ss[i] = fmaf(raw[u].x, raw[u].x, fmaf(raw[u].y, raw[u].y, ss[i]));
          float mx = fmaxf(fabsf(v[u].x), fabsf(v[u].y));
#pragma unroll
          for (int o = 8; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
          int e = 0;
          if (mx > 0.0f && mx <= 3.0e38f) frexpf(mx, &e);  // mx = f 2^e, f in [0.5, 1)
          const float xsc = ldexpf(1.0f, -e);
          const __half2 h = __floats2half2_rn(v[u].x * xsc, v[u].y * xsc);
          const int ch = c >> 5;
          if (c < K) {
            xs[(i * p.nch + ch) * kChunkWords + ((c & 31) >> 1)] = *reinterpret_cast<const uint32_t*>(&h);
            if ((lane & 15) == 0) cs[i * p.nch + ch] = ldexpf(1.0f, e);
          }
          if (p.asym) {
            float t = __low2float(h) + __high2float(h);
#pragma unroll
            for (int o = 8; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
            if (c < K && (lane & 15) == 0) sxs[i * p.nch + ch] = t;
          }
        }
      }
      ss[i] = warp_sum(ss[i]);
      if (lane == 0) s_part[warp][i] = ss[i];
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < M; ++i) {
      ys[i] = 1.0f;
      if constexpr (OP == InputOp::RmsNorm) {
        float t = 0.0f;
#pragma unroll
        for (int w = 0; w < kQWarps; ++w) t += s_part[w][i];
        ys[i] = 1.0f / sqrtf(t / float(p.K) + p.eps);
      }
    }
  }

  const int64_t xs_ld = p.nch * kChunkWords;
  float acc[kR][M];
#pragma unroll
  for (int r = 0; r < kR; ++r)
#pragma unroll
    for (int i = 0; i < M; ++i) acc[r][i] = 0.0f;
  int cj = 0;
  int64_t crg = rg0;
  for (int t0 = 0; t0 < total; t0 += D) {
#pragma unroll
    for (int st = 0; st < D; ++st) {
      const int t = t0 + st;
      if (t >= total) break;  // warp-uniform
      const int q = q_begin + lane + 32 * cj;
      if (q < q_end) {
        const Chunk<BITS>(&cur)[kR] = buf[st];
        __half2 nz[kR], hacc[acc_banks<M>()][kR][M];
        float zf[kR];
#pragma unroll
        for (int r = 0; r < kR; ++r) {
          if constexpr (ASYM) {
            const float zi = fminf(fmaxf(rintf(cur[r].z), -1024.0f), 1024.0f);
            zf[r] = cur[r].z - zi;
            nz[r] = __float2half2_rn(-zi);
          } else {
            zf[r] = 0.0f;
            nz[r] = h2_const(h_neg_pow2(BITS - 1));  // -2^(BITS-1), exact
          }
#pragma unroll
          for (int i = 0; i < M; ++i)
#pragma unroll
            for (int b = 0; b < acc_banks<M>(); ++b) hacc[b][r][i] = __float2half2_rn(0.0f);
        }
        const uint32_t* xq = xs + q * kChunkWords;
        chunk_block<BITS, M, 0>(cur, nz, xq, xs_ld, hacc);
        chunk_block<BITS, M, 1>(cur, nz, xq, xs_ld, hacc);
        chunk_block<BITS, M, 2>(cur, nz, xq, xs_ld, hacc);
        chunk_block<BITS, M, 3>(cur, nz, xq, xs_ld, hacc);
#pragma unroll
        for (int r = 0; r < kR; ++r)
#pragma unroll
          for (int i = 0; i < M; ++i) {
            float d = __low2float(hacc[0][r][i]) + __high2float(hacc[0][r][i]);
            if constexpr (acc_banks<M>() > 1) d += __low2float(hacc[1][r][i]) + __high2float(hacc[1][r][i]);
            if constexpr (ASYM) d = fmaf(-zf[r], sxs[i * p.nch + q], d);
            acc[r][i] = fmaf(cur[r].s * cs[i * p.nch + q], d, acc[r][i]);
          }
      }
      fetch_next(buf[st]);
      if (cj == T - 1) {  // last chunk step of a row group: reduce and write
        const int64_t rg = crg;
#pragma unroll
        for (int r = 0; r < kR; ++r)
#pragma unroll
          for (int i = 0; i < M; ++i) acc[r][i] = warp_sum(acc[r][i]);
        if (p.ks > 1) {  // the ks warps of this row group meet at their own named barrier
          const int bar = 1 + warp / p.ks, nthr = 32 * p.ks;
          if (lane == 0)
#pragma unroll
            for (int r = 0; r < kR; ++r)
#pragma unroll
              for (int i = 0; i < M; ++i) s_red[warp][r][i] = acc[r][i];
          named_barrier(bar, nthr);
          if (ksi == 0)
#pragma unroll
            for (int r = 0; r < kR; ++r)
#pragma unroll
              for (int i = 0; i < M; ++i) {
                float v = 0.0f;
                for (int w = warp; w < warp + p.ks; ++w) v += s_red[w][r][i];
                acc[r][i] = v;
              }
          named_barrier(bar, nthr);  // s_red is reused by the next row group
        }
        if (ksi == 0) write_out<M>(p, rg * kR, lane, acc, ys);
#pragma unroll
        for (int r = 0; r < kR; ++r)
#pragma unroll
          for (int i = 0; i < M; ++i) acc[r][i] = 0.0f;
      }
      if (++cj == T) cj = 0, crg += rg_stride;
    }
  }
}

size_t stage_bytes(int M, int64_t nch) { return size_t(M) * size_t(nch) * (kChunkWords * 4 + 8); }

template <int BITS, int M, InputOp OP, bool ASYM>
void launch_op(QParams p, cudaStream_t s) {
  constexpr int kQThreads = gemv_threads<M>(), kQWarps = kQThreads / 32;
  auto* kern = qbits_gemv_kernel<BITS, M, OP, ASYM>;
  const size_t shm = stage_bytes(M, p.nch);
  // Opt in to more than 48 KiB once per instantiation (not a stream operation, so this
  // is legal while a graph is being captured).
  static const bool opted = [&] {
    ANYBIT_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kMaxSmem)));
    return true;
  }();
  (void)opted;
  // Blocks per SM for this shared-memory size, cached (the query costs host time per launch).
  static std::mutex mu;
  static std::map<size_t, int> per_sm_of;
  int per_sm = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = per_sm_of.find(shm);
    if (it == per_sm_of.end()) {
      ANYBIT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, kQThreads, shm));
      it = per_sm_of.emplace(shm, std::max(per_sm, 1)).first;
    }
    per_sm = it->second;
  }
  const int64_t capacity = int64_t(per_sm) * sm_count();  // resident blocks
  // Split K over ks warps when that shortens the slowest warp's work: waves of (row group,
  // K slice) items over the resident warps, each item T chunk steps plus its reduction
  // (a named barrier and shared memory when ks > 1), while every lane keeps a chunk.
  p.ks = 1;
  double best = 1e30;
  for (int ks = 1; ks <= kQWarps; ks *= 2) {
    if (ks > 1 && p.nch < 32 * ks) break;
    const double items = double(p.groups) * ks, warps = double(capacity) * kQWarps;
    const double steps = std::ceil(double(p.nch) / ks / 32.0), epi = ks > 1 ? 1.0 : 0.5;
    const double cost = std::ceil(items / warps) * (steps + epi);
    if (cost < best) best = cost, p.ks = ks;
  }
  const int wpb = kQWarps / p.ks;
  // Interleaved slots (p.spread) where the rows are long and many: on an H100 the 8B shape's
  // decode went from 367 to 373 t/s with them, while the 1B shape (K = 2048) fell from 1,582
  // to 1,495 t/s, so short rows keep contiguous slots. ANYBIT_QBITS_GEMV_SPREAD=0/1 forces.
  static const int spread_env = [] {
    const char* e = std::getenv("ANYBIT_QBITS_GEMV_SPREAD");
    return e ? std::atoi(e) : -1;
  }();
  const bool spread = spread_env >= 0 ? spread_env != 0 : (p.K >= 4096 && p.N >= 4096);
  p.spread = spread ? 1 : 0;
  const int64_t grid = std::min<int64_t>(spread ? p.groups : (p.groups + wpb - 1) / wpb, capacity);
  launch_pdl(kern, unsigned(grid), kQThreads, shm, s, p);
}

template <int BITS, int M, bool ASYM>
void launch_m_asym(const QParams& p, InputOp op, cudaStream_t s) {
  switch (op) {
    case InputOp::None: launch_op<BITS, M, InputOp::None, ASYM>(p, s); break;
    case InputOp::RmsNorm: launch_op<BITS, M, InputOp::RmsNorm, ASYM>(p, s); break;
    case InputOp::SiluMul: launch_op<BITS, M, InputOp::SiluMul, ASYM>(p, s); break;
  }
}

template <int BITS, int M>
void launch_m(const QParams& p, InputOp op, cudaStream_t s) {
  if (p.asym) launch_m_asym<BITS, M, true>(p, op, s);
  else launch_m_asym<BITS, M, false>(p, op, s);
}

template <int BITS>
void launch_bits(const QParams& p, InputOp op, int M, cudaStream_t s) {
  if (M == 1) launch_m<BITS, 1>(p, op, s);
  else if (M == 2) launch_m<BITS, 2>(p, op, s);
  else launch_m<BITS, 4>(p, op, s);
}

bool aligned(const void* p, unsigned n) { return (reinterpret_cast<uintptr_t>(p) & (n - 1)) == 0; }

}  // namespace

namespace qdetail {

void check_weight(const QbitsDeviceWeight& w) {
  if (w.bits < 2 || w.bits > 8) fail("CUDA gemv_qbits: bit width {} is not supported (2..8)", w.bits);
  if (w.rows <= 0 || w.cols <= 0 || w.cols % 32 != 0 || w.group <= 0 || w.group % 32 != 0 || w.cols % w.group != 0)
    fail("CUDA gemv_qbits: bad weight shape {} x {} (group {})", w.rows, w.cols, w.group);
  for (int pl = 0; pl < plane_count(w.bits); ++pl)
    if (!w.planes[pl] || !aligned(w.planes[pl], 16)) fail("CUDA gemv_qbits: plane {} missing or not 16-byte aligned", pl);
  if (!w.scales || (w.asymmetric && !w.zeros)) fail("CUDA gemv_qbits: scales or zeros missing");
  // The kernels index chunks and groups of one matrix with 32-bit integers.
  if (w.rows * (w.cols / 32) >= (int64_t(1) << 31))
    fail("CUDA gemv_qbits: {} x {} has 2^31 or more 32-column chunks", w.rows, w.cols);
}

void check_a16(const QbitsDeviceWeight& w, const char* what) {
  if (w.act_bits != 0)
    fail("CUDA {}: the weight has act_bits {} (int8 activations): run it with a8_qbits / linear_qbits", what, w.act_bits);
}

// The weight's part of the kernel parameters (shared by the GEMV and the dequantizer).
QParams weight_params(const QbitsDeviceWeight& w) {
  QParams p{};
  p.K = w.cols, p.N = w.rows, p.nch = w.cols / 32;
  for (int pl = 0; pl < 3; ++pl) p.plane[pl] = w.planes[pl];
  p.scales = w.scales, p.zeros = w.zeros;
  p.scales_f16 = w.scales_f16 ? 1 : 0, p.zeros_f16 = w.zeros_f16 ? 1 : 0, p.asym = w.asymmetric ? 1 : 0;
  p.zero_sym = float(1 << (w.bits - 1));
  p.G = int(w.cols / w.group), p.cpg = w.group / 32;
  p.cpg_shift = p.cpg == 1 ? 0 : p.cpg == 2 ? 1 : p.cpg == 4 ? 2 : p.cpg == 8 ? 3 : -1;
  p.inv_s = w.inv_input_scale;
  return p;
}

QParams gemv_params(const LinearArgs& a, const QbitsDeviceWeight& w) {
  QParams p = weight_params(w);
  p.x = a.x, p.ldx = a.ldx, p.m = int(a.m);
  p.norm_w = a.norm_w, p.eps = a.eps, p.bias = a.bias;
  p.accumulate = a.accumulate ? 1 : 0, p.pair = a.silu_pairs ? 1 : 0;
  p.y = a.y, p.ldy = a.ldy;
  return p;
}

}  // namespace qdetail

namespace {

// One launch for m <= M rows of x, M in {1, 2, 4}.
void gemv_qbits_block(const LinearArgs& a, const QbitsDeviceWeight& w, int M, cudaStream_t s) {
  QParams p = gemv_params(a, w);
  p.groups = (w.rows + kR - 1) / kR;
  with_bits(w.bits, [&](auto b) { launch_bits<decltype(b)::value>(p, a.op, M, s); });
  check_launch("gemv_qbits");
}

// ---- prefill: dequantize to bf16 (1/input_scale folded in), then the bf16 GEMM ----------

template <int BITS>
__global__ void dequant_qbits_kernel(const QParams p, __nv_bfloat16* out) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // one thread per (row, chunk)
  if (t >= p.N * p.nch) return;
  const int64_t row = t / p.nch, q = t % p.nch;
  Chunk<BITS> c;
  load_chunk<BITS>(p, row, q, c);
  // 32 values as 16 bf16 pairs, written as four 16-byte stores (consecutive threads own
  // consecutive chunks of a row, so a warp writes 2 KiB contiguously).
  uint32_t pk[16];
#pragma unroll
  for (int e = 0; e < 32; ++e) {
    const int pi = e / 2, hi = e % 2;
    uint32_t code = 0;
    int wbase = 0;
#pragma unroll
    for (int pl = 0; pl < plane_count(BITS); ++pl) {
      const int W = plane_width(BITS, pl), per = 16 / W;
      const int bit = 16 * hi + W * (pi % per);
      code |= ((c.w[wbase + pi / per] >> bit) & ((1u << W) - 1u)) << plane_shift(BITS, pl);
      wbase += W;
    }
    float v = c.s * (float(code) - c.z);
    if (p.inv_s) v *= __ldg(p.inv_s + q * 32 + e);
    const uint32_t b = __bfloat16_as_ushort(__float2bfloat16_rn(v));
    pk[pi] = hi ? (pk[pi] | (b << 16)) : b;
  }
  uint4* o = reinterpret_cast<uint4*>(out + row * p.K + q * 32);
#pragma unroll
  for (int j = 0; j < 4; ++j) o[j] = make_uint4(pk[4 * j], pk[4 * j + 1], pk[4 * j + 2], pk[4 * j + 3]);
}

}  // namespace

QbitsDeviceAlloc upload_qbits(const QbitsGpuPack& p) {
  int np = 0, wd[3] = {0, 0, 0}, sh[3] = {0, 0, 0};
  qbits_plane_split(p.bits, np, wd, sh);
  if (np != p.n_planes || np != plane_count(p.bits)) fail("upload_qbits: plane split mismatch for {} bits", p.bits);
  for (int q = 0; q < np; ++q)
    if (wd[q] != p.width[q] || wd[q] != plane_width(p.bits, q) || sh[q] != p.shift[q] || sh[q] != plane_shift(p.bits, q) ||
        p.planes[q].size() != p.plane_bytes(q))
      fail("upload_qbits: plane {} of a {}-bit pack is inconsistent", q, p.bits);
  const size_t ng = size_t(p.rows) * size_t(p.groups_per_row());
  const size_t sbytes = ng * (p.scales_f16 ? 2 : 4), zbytes = p.asymmetric ? ng * (p.zeros_f16 ? 2 : 4) : 0;
  if ((p.scales_f16 ? p.scales_h.size() : p.scales_f.size()) != ng ||
      (p.asymmetric && (p.zeros_f16 ? p.zeros_h.size() : p.zeros_f.size()) != ng))
    fail("upload_qbits: metadata sizes do not match {} groups", ng);
  auto align256 = [](size_t n) { return (n + 255) / 256 * 256; };
  // kQbitsPadRows zero rows after each plane and metadata array: the SIMT GEMV's last row
  // group reads them instead of clamping every row's index (results for them are not written).
  const size_t pad_rows = size_t(kQbitsPadRows), gpr = size_t(p.groups_per_row());
  size_t off[6] = {}, total = 0;
  for (int q = 0; q < np; ++q) {
    const size_t n = p.planes[q].size();
    off[q] = total, total += align256(n + pad_rows * (n / size_t(p.rows)));
  }
  off[3] = total, total += align256(sbytes + pad_rows * gpr * (p.scales_f16 ? 2 : 4));
  off[4] = total, total += align256(zbytes ? zbytes + pad_rows * gpr * (p.zeros_f16 ? 2 : 4) : 0);
  off[5] = total, total += align256(p.inv_input_scale.size() * 4);

  QbitsDeviceAlloc a;
  ANYBIT_CUDA_CHECK(cudaMalloc(&a.buffer, total));
  ANYBIT_CUDA_CHECK(cudaMemset(a.buffer, 0, total));
  a.bytes = total;
  auto* base = static_cast<char*>(a.buffer);
  auto put = [&](size_t o, const void* src, size_t n) {
    if (n) ANYBIT_CUDA_CHECK(cudaMemcpy(base + o, src, n, cudaMemcpyHostToDevice));
  };
  QbitsDeviceWeight& w = a.w;
  w.rows = p.rows, w.cols = p.cols, w.bits = p.bits, w.group = p.group, w.asymmetric = p.asymmetric;
  w.act_bits = p.act_bits;
  w.scales_f16 = p.scales_f16, w.zeros_f16 = p.zeros_f16;
  for (int q = 0; q < np; ++q) {
    put(off[q], p.planes[q].data(), p.planes[q].size());
    w.planes[q] = reinterpret_cast<const uint8_t*>(base + off[q]);
  }
  put(off[3], p.scales_f16 ? static_cast<const void*>(p.scales_h.data()) : p.scales_f.data(), sbytes);
  w.scales = base + off[3];
  if (p.asymmetric) {
    put(off[4], p.zeros_f16 ? static_cast<const void*>(p.zeros_h.data()) : p.zeros_f.data(), zbytes);
    w.zeros = base + off[4];
  }
  if (!p.inv_input_scale.empty()) {
    put(off[5], p.inv_input_scale.data(), p.inv_input_scale.size() * 4);
    w.inv_input_scale = reinterpret_cast<const float*>(base + off[5]);
  }
  w.weight_bytes = p.weight_bytes();
  return a;
}

void free_qbits(QbitsDeviceAlloc& a) {
  if (a.buffer) cudaFree(a.buffer);
  a = QbitsDeviceAlloc{};
}

namespace {
// Which GEMV runs (set_qbits_gemv_tc; ANYBIT_QBITS_GEMV_TC=0/1 forces one). Auto: the
// tensor-core GEMV for m >= 2 (1.7-2.3x the SIMT one at m = 4 on the 8B shapes, H100) and
// for long rows (K >= 12288) at m = 1 (8B down 18.5 vs 20.5 us); the SIMT GEMV for the
// other m = 1 matrices, where it is faster (8B gate|up 28.6 vs 30.8 us, q|k|v 9.6 vs 10.8;
// the 1B shape's down, K = 8192, also ran faster on it).
std::atomic<int> g_gemv_tc{-1};
bool use_gemv_tc(int64_t m, int64_t K) {
  int v = g_gemv_tc.load(std::memory_order_relaxed);
  if (v < 0) {
    const char* e = std::getenv("ANYBIT_QBITS_GEMV_TC");
    v = e ? (std::atoi(e) != 0 ? 1 : 0) : 2;
    g_gemv_tc.store(v, std::memory_order_relaxed);
  }
  return v == 1 || (v == 2 && (m >= 2 || K >= 12288));
}
// x rows per tensor-core GEMV launch for this call, 0 where the SIMT GEMV runs. Its group
// indexing handles the format's 32-, 64- and 128-column groups only.
int tc_rows(int64_t m, const QbitsDeviceWeight& w) {
  const bool group_ok = w.group == 32 || w.group == 64 || w.group == 128;
  return group_ok && use_gemv_tc(m, w.cols) ? gemv_tc_max_rows(w.cols) : 0;
}
}  // namespace

void set_qbits_gemv_tc(int mode) { g_gemv_tc.store(mode == 0 || mode == 1 ? mode : 2, std::memory_order_relaxed); }

void gemv_qbits(const LinearArgs& a, const QbitsDeviceWeight& w, cudaStream_t s) {
  if (a.m <= 0) return;
  check_weight(w);
  check_a16(w, "gemv_qbits");
  if (!a.x || !a.y) fail("CUDA gemv_qbits: x or y is null");
  if (!aligned(a.x, 8) || a.ldx % 2 != 0)
    fail("CUDA gemv_qbits: x must be 8-byte aligned with an even ldx (ldx = {})", a.ldx);
  if (a.ldx < (a.op == InputOp::SiluMul ? 2 * w.cols : w.cols))
    fail("CUDA gemv_qbits: ldx = {} is shorter than an input row (K = {}, op {})", a.ldx, w.cols, int(a.op));
  if (a.op == InputOp::RmsNorm && (!a.norm_w || !aligned(a.norm_w, 8)))
    fail("CUDA gemv_qbits: RMSNorm needs an 8-byte aligned norm weight");
  if (a.silu_pairs && (w.rows % 2 != 0 || a.accumulate))
    fail("CUDA gemv_qbits: SiLU pairs need an even row count and no accumulate (N = {})", w.rows);
  if (a.ldy < (a.silu_pairs ? w.rows / 2 : w.rows)) fail("CUDA gemv_qbits: ldy = {} is too small", a.ldy);
  // x rows per launch: as many as fit in shared memory (at most 16 on the tensor-core path,
  // 4 on the SIMT one). Larger batches run the GEMV once per group of rows: correct for
  // every op, but W is re-read (see gemm_qbits).
  const int tc = tc_rows(a.m, w);
  int M = tc;
  if (tc == 0) {
    const int64_t nch = w.cols / 32;
    M = 4;
    while (M > 1 && stage_bytes(M, nch) > kMaxSmem) M /= 2;
    if (stage_bytes(M, nch) > kMaxSmem) fail("CUDA gemv_qbits: K = {} is too long for shared-memory staging", w.cols);
  }
  for (int64_t i0 = 0; i0 < a.m; i0 += M) {
    LinearArgs b = a;
    b.x = a.x + i0 * a.ldx;
    b.y = a.y + i0 * a.ldy;
    b.m = std::min<int64_t>(M, a.m - i0);
    if (tc > 0) gemv_qbits_tc(b, w, s);
    else gemv_qbits_block(b, w, b.m <= 1 ? 1 : b.m <= 2 ? 2 : 4, s);
  }
}

size_t qbits_scratch_bytes(const QbitsDeviceWeight& w) {
  return std::max({size_t(w.rows) * size_t(w.cols) * 2, qbits_mma_scratch_bytes(w),
                   w.act_bits == 8 ? qbits_a8_scratch_bytes(w) : size_t(0)});
}

void gemm_qbits(const LinearArgs& a, const QbitsDeviceWeight& w, void* scratch, cudaStream_t s) {
  if (a.m <= 0) return;
  check_weight(w);
  check_a16(w, "gemm_qbits");
  if (!scratch || !aligned(scratch, 256)) fail("CUDA gemm_qbits: scratch missing or not 256-byte aligned");
  if (a.op != InputOp::None || a.silu_pairs) fail("CUDA gemm_qbits: the GEMM path takes op None without SiLU pairs");
  const QParams p = weight_params(w);
  auto* out = static_cast<__nv_bfloat16*>(scratch);
  const unsigned grid = blocks_for(p.N * p.nch, 256);
  with_bits(w.bits, [&](auto b) { dequant_qbits_kernel<decltype(b)::value><<<grid, 256, 0, s>>>(p, out); });
  check_launch("dequant_qbits");
  DeviceWeight d{DType::BF16, w.rows, w.cols, scratch};
  gemm(a, d, s);
}

namespace {
enum class QPath { A8, Gemv, Mma, Dequant };
QPath linear_path(int64_t m, const QbitsDeviceWeight& w) {
  // ANYBIT_QBITS_MMA=0 sends batched rows to the dequantize + GEMM path (for comparisons).
  static const bool mma = [] {
    const char* e = std::getenv("ANYBIT_QBITS_MMA");
    return !(e && std::string(e) == "0");
  }();
  if (w.act_bits == 8) return QPath::A8;
  // m = 5..16 only where the tensor-core GEMV takes all rows in one launch (else W is re-read)
  // and, above 8 rows, where the x that every block stages (m K fp32 values per block, read
  // from L2) stays under 2.5x the weight bytes: past that the staging outweighs the streaming.
  // Measured on an H100 (PERFORMANCE.md, ninth session): at m = 12 and 16 the GEMV beats
  // mma_qbits on the 8B gate|up (ratio 0.4-0.6) and q|k|v at m = 12 (2.1), and loses on o
  // (3.1-4.1) and q|k|v at m = 16 (2.75).
  const auto x_over_w = [&] {
    const double blocks = double(std::min<int64_t>((w.rows + 15) / 16, sm_count()));
    return double(m) * 4.0 * blocks / (double(w.rows) * w.bits / 8.0);
  };
  if (m <= kGemvMaxRows || (m <= kQbitsGemvMaxRows && m <= tc_rows(m, w) && (m <= 8 || x_over_w() <= 2.5)))
    return QPath::Gemv;
  if (mma && m <= kMmaMaxRows) return QPath::Mma;
  return QPath::Dequant;
}
}  // namespace

const char* linear_qbits_path(int64_t m, const QbitsDeviceWeight& w) {
  switch (linear_path(m, w)) {
    case QPath::A8: return "a8";
    case QPath::Gemv: return tc_rows(m, w) > 0 ? "gemv-tc" : "gemv-simt";
    case QPath::Mma: return "mma";
    default: return "dequant+gemm";
  }
}

void linear_qbits(const LinearArgs& a, const QbitsDeviceWeight& w, void* scratch, cudaStream_t s) {
  switch (linear_path(a.m, w)) {
    case QPath::A8: a8_qbits(a, w, scratch, s); break;
    case QPath::Gemv: gemv_qbits(a, w, s); break;
    case QPath::Mma: mma_qbits(a, w, scratch, s); break;
    default: gemm_qbits(a, w, scratch, s); break;
  }
}

}  // namespace anybit::cuda
