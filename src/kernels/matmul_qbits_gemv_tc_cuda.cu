// W{2..8}A16 GEMV on the tensor cores (m <= 16 per launch) for the QBITS format, in its GPU
// layout (kernels/qbits_cuda_pack.h). gemv_qbits (matmul_qbits_cuda.cu) runs it for m >= 2,
// where it is about twice the SIMT GEMV, and for long rows at m = 1.
//
// Design, and why:
// - The SIMT GEMV spends about five issued instructions per 4-bit weight (conversion and an
//   f16 multiply-add per pair, the per-chunk fp32 tail), and at m > 1 it repeats the
//   multiply-adds per row of x. Here the products go to mma.sync.m16n8k16: per pair of
//   weights one field extraction and one HFMA2 turning it into q - round(z), then one mma
//   per 256 weights of a warp, for up to 8 rows of x at once.
// - A warp owns a tile of 16 weight rows; lane (g, t) = (lane / 4, lane % 4) loads rows
//   g and g + 8 of chunk 4s + t (32 columns, 16 bytes at 4 bits) at step s, so a warp's
//   load of one row covers 4 consecutive chunks (64 contiguous bytes). The k order inside
//   the mma is permuted to match: slab j of step s takes pairs 2j and 2j + 1 of each lane's
//   chunk as its (2t, 2t+1) and (2t+8, 2t+9) columns, and x is read in the same order.
// - x is staged once per block as f16 in shared memory, each 128-column block of each row
//   scaled by its own power of two 2^-e (|x'| < 1, exact), in the pair order of a chunk.
//   A step is one 128-column block: with 128-column groups (the common case) the weight
//   scale, the x scale and the fractional zero -frac(z) s sum(x') are applied to the mma
//   result once per step, in fp32; smaller groups scale the f16 weights before the mma.
// - Tokens are the mma's N = 8 columns: m <= 8 costs the same weight traffic as m = 1.
//   9 <= m <= 16 (NT = 2) issues a second mma per slab on the same A fragments, so the
//   dequantization is shared by both token tiles.
// - Persistent blocks of 16 warps; K is split over ks warps of a block when there are too
//   few row tiles (partials summed in shared memory at a named barrier per team), as in
//   the SIMT GEMV. Each lane keeps D steps of weights in flight in registers, the first
//   ones requested before waiting on the previous kernel (programmatic dependent launch).
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/cuda_common.cuh"
#include "kernels/qbits_cuda_common.cuh"

namespace anybit::cuda {
namespace {

using namespace detail;
using namespace qdetail;

constexpr int kTcThreads = 512, kTcWarps = kTcThreads / 32;
constexpr int kTcMaxM = 16;
constexpr int kWordsPerChunk = 20;          // 16 words (32 f16) of x per chunk + 4 of padding
constexpr size_t kTcMaxSmem = 200 * 1024;  // plus 8.7 KiB static: below the 227 KiB opt-in limit

// Register ring depth per bit width and token tiles: as many steps in flight as fit in
// 128 registers (the second token tile holds 8 more accumulators and x fragments).
template <int BITS, int NT>
__host__ __device__ constexpr int ring_depth() {
  if constexpr (NT == 1) return words_per_chunk(BITS) <= 2 ? 6 : words_per_chunk(BITS) <= 4 ? 4 : 2;
  else return words_per_chunk(BITS) <= 2 ? 4 : words_per_chunk(BITS) <= 4 ? 3 : 2;
}

struct TcLayout {
  int64_t nblk;   // 128-column blocks (K padded up)
  int64_t ld;     // words of one token's staged x
};

__host__ __device__ inline TcLayout tc_layout(int64_t K) {
  TcLayout l;
  l.nblk = (K + 127) / 128;
  l.ld = l.nblk * 4 * kWordsPerChunk + 4;
  return l;
}

size_t tc_stage_bytes(int m, int64_t K) {
  const TcLayout l = tc_layout(K);
  return size_t(m) * (size_t(l.ld) * 4 + size_t(l.nblk) * 8);
}

__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t h2u(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }

// Pair PI of a chunk as f16 (q - round z) both halves, scaled by s when PRE (groups < 128).
template <int BITS, int PI, bool PRE>
__device__ __forceinline__ uint32_t pair_value(const Chunk<BITS>& c, __half2 nz, __half2 s2, __half2 zs2) {
  constexpr int P = code_pos(BITS, PI);
  const __half2 off = __hadd2(h2_const(h_neg_pow2(10 - P)), nz);
  const __half2 v = __hfma2(as_h2(pair_bits<BITS, PI>(c.w)), h2_const(h_pow2_neg(P)), off);
  if constexpr (PRE) return h2u(__hfma2(v, s2, zs2));
  else return h2u(v);
}

template <int BITS, bool PRE, int NT, int J>
__device__ __forceinline__ void slab(float (&c)[NT][4], const Chunk<BITS>& ca, const Chunk<BITS>& cb,
                                     const __half2 (&nz)[2], const __half2 (&s2)[2], const __half2 (&zs2)[2],
                                     const uint4* const (&xp)[NT]) {
  // xp[n][J / 2] holds pairs 4(J/2) .. 4(J/2)+3 of the lane's chunk of x for token tile n;
  // slab J takes pairs 2J, 2J+1. The A fragments (the weights) serve every token tile. x is
  // read here, not for the whole step, to keep registers for the weight ring.
  const uint32_t a0 = pair_value<BITS, 2 * J, PRE>(ca, nz[0], s2[0], zs2[0]);
  const uint32_t a1 = pair_value<BITS, 2 * J, PRE>(cb, nz[1], s2[1], zs2[1]);
  const uint32_t a2 = pair_value<BITS, 2 * J + 1, PRE>(ca, nz[0], s2[0], zs2[0]);
  const uint32_t a3 = pair_value<BITS, 2 * J + 1, PRE>(cb, nz[1], s2[1], zs2[1]);
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    const uint4 xa = xp[n][J / 2];
    mma16816(c[n], a0, a1, a2, a3, (J % 2 == 0) ? xa.x : xa.z, (J % 2 == 0) ? xa.y : xa.w);
  }
}

template <int BITS, InputOp OP, bool PRE, int NT>
__global__ void __launch_bounds__(kTcThreads, 1) qbits_gemv_tc_kernel(const QParams p) {
  constexpr int D = ring_depth<BITS, NT>();
  extern __shared__ uint4 s_dyn[];
  const TcLayout L = tc_layout(p.K);
  uint32_t* xs = reinterpret_cast<uint32_t*>(s_dyn);              // [m][ld]: chunk-major, 20 words per chunk
  float* cs = reinterpret_cast<float*>(xs + p.m * L.ld);           // [m][nblk] 2^e of each block
  float* sxs = cs + p.m * L.nblk;                                   // [m][nblk] sum of x' per block (asym)
  __shared__ float s_red[kTcWarps][32][4 * NT];
  __shared__ float s_part[kTcWarps][kTcMaxM];
  __shared__ uint4 s_zero[4];  // the B operand of tokens >= m
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int ks = p.ks, wpb = kTcWarps / ks, ksi = warp % ks;
  const int64_t nch = p.nch;
  const int s_begin = int(ksi * L.nblk / ks), s_end = int((ksi + 1) * L.nblk / ks);
  const int T = s_end - s_begin;  // steps per item (>= 1: the launcher keeps ks <= nblk)
  const int64_t tiles = (p.N + 15) / 16;
  const int64_t tile_stride = int64_t(gridDim.x) * wpb;
  const int64_t tile0 = int64_t(warp / ks) * gridDim.x + blockIdx.x;
  const int total = tile0 < tiles ? int((tiles - 1 - tile0) / tile_stride + 1) * T : 0;

  // The fetch cursor: chunk and group indices of rows g and g + 8 (32-bit: the packed
  // planes of one matrix hold fewer than 2^31 chunks), advanced by additions. Chunks past K
  // and rows past N read the last valid ones (x is zero there, the rows are not stored);
  // past the warp's work the cursor stops, so no load needs a predicate.
  const uint32_t nchu = uint32_t(nch), Gu = uint32_t(p.G);
  const int cpg_shift = p.cpg_shift;  // groups of 128 / 64 / 32 columns (gemv_qbits checks)
  uint32_t f_row[2] = {0, 0}, f_grp[2] = {0, 0};  // rows g, g + 8 of the fetched tile: row * nch, row * G
  int f_q = s_begin * 4 + t, fj = 0, fetched = 0;
  int64_t ftile = tile0;
  auto set_rows = [&] {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t n = ftile * 16 + g + 8 * r;
      const uint32_t row = uint32_t(n < p.N ? n : p.N - 1);
      f_row[r] = row * nchu, f_grp[r] = row * Gu;
    }
  };
  set_rows();
  auto fetch_next = [&](Chunk<BITS>(&c)[2]) {
    const uint32_t q = uint32_t(min(f_q, int(nch) - 1)), qg = q >> cpg_shift;
    load_chunk_idx<BITS>(p, f_row[0] + q, f_grp[0] + qg, c[0]);
    load_chunk_idx<BITS>(p, f_row[1] + q, f_grp[1] + qg, c[1]);
    if (++fetched < total) {
      f_q += 4;
      if (++fj == T) fj = 0, f_q = s_begin * 4 + t, ftile += tile_stride, set_rows();
    }
  };
  Chunk<BITS> buf[D][2];
#pragma unroll
  for (int st = 0; st < D; ++st) fetch_next(buf[st]);

  if (threadIdx.x < 4) s_zero[threadIdx.x] = make_uint4(0, 0, 0, 0);
  pdl_wait();
  pdl_trigger();

  // Stage op(x): the (token, 128-column block) items are dealt to the warps round-robin,
  // lane l taking columns 4l .. 4l + 3 (two pairs of chunk l / 8), each block scaled by its
  // 2^-e. The loads of kU items are issued before the first is used (x sits in L2: one round
  // trip per kU items, which matters at m = 16). s_part[warp][i]: the warp's sum of x_i^2.
  constexpr int kU = 4 * NT;
  const int K = int(p.K), nblk = int(L.nblk), items = p.m * nblk;
  if (lane < kTcMaxM) s_part[warp][lane] = 0.0f;
  __syncwarp();
  for (int it0 = warp; it0 < items; it0 += kTcWarps * kU) {
    float2 v[kU][2];
    float sq[kU];  // the lane's sum of raw x^2 (RMSNorm)
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int it = it0 + kTcWarps * u, i = it / nblk, c = (it - i * nblk) * 128 + 4 * lane;
      float2 r0 = make_float2(0.0f, 0.0f), r1 = r0;
      v[u][0] = v[u][1] = r0;
      if (it < items && c < K) v[u][0] = op_x2<OP>(p, i, c, r0), v[u][1] = op_x2<OP>(p, i, c + 2, r1);
      sq[u] = fmaf(r0.x, r0.x, fmaf(r0.y, r0.y, fmaf(r1.x, r1.x, r1.y * r1.y)));
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int it = it0 + kTcWarps * u;
      if (it >= items) break;  // warp-uniform
      const int i = it / nblk, b = it - i * nblk;
      const float2 v0 = v[u][0], v1 = v[u][1];
      if constexpr (OP == InputOp::RmsNorm) {
        const float ss = warp_sum(sq[u]);
        if (lane == 0) s_part[warp][i] += ss;
      }
      const float mx = warp_max(fmaxf(fmaxf(fabsf(v0.x), fabsf(v0.y)), fmaxf(fabsf(v1.x), fabsf(v1.y))));
      int e = 0;
      if (mx > 0.0f && mx <= 3.0e38f) frexpf(mx, &e);  // mx = f 2^e, f in [0.5, 1)
      const float sc = ldexpf(1.0f, -e);
      const __half2 h0 = __floats2half2_rn(v0.x * sc, v0.y * sc), h1 = __floats2half2_rn(v1.x * sc, v1.y * sc);
      uint32_t* dst = xs + i * L.ld + (b * 4 + lane / 8) * kWordsPerChunk + 2 * (lane % 8);
      *reinterpret_cast<uint2*>(dst) = make_uint2(h2u(h0), h2u(h1));
      if (p.asym) {
        const float sum = warp_sum(__low2float(h0) + __high2float(h0) + __low2float(h1) + __high2float(h1));
        if (lane == 0) sxs[i * L.nblk + b] = sum;
      }
      if (lane == 0) cs[i * L.nblk + b] = ldexpf(1.0f, e);
    }
  }
  __syncthreads();
  // The RMSNorm factor (applied to the result) of this lane's tokens 8n + 2t, 8n + 2t + 1.
  float ys[NT][2];
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      ys[n][j] = 1.0f;
      if (OP == InputOp::RmsNorm && 8 * n + 2 * t + j < p.m) {
        float tt = 0.0f;
#pragma unroll
        for (int w = 0; w < kTcWarps; ++w) tt += s_part[w][8 * n + 2 * t + j];
        ys[n][j] = 1.0f / sqrtf(tt / float(p.K) + p.eps);
      }
    }

  // B operand of token tile n: token 8n + g's chunk 4s + t of x', 4 chunks (20 uint4) further
  // per step; lanes of tokens >= m read a zero chunk that does not move. The lane's
  // accumulators are tokens 8n + 2t, 8n + 2t + 1: their x scales (0 past m) and sums.
  const uint4* xbase[NT];
  int xstep[NT];
  float xv[NT][2];
  const float *csp[NT][2], *sxp[NT][2];
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    const int tok = 8 * n + g;
    xbase[n] = tok < p.m ? reinterpret_cast<const uint4*>(xs + tok * L.ld + (int64_t(s_begin) * 4 + t) * kWordsPerChunk)
                         : s_zero;
    xstep[n] = tok < p.m ? kWordsPerChunk : 0;  // 4 chunks of 20 words = 20 uint4 per step
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int i = 8 * n + 2 * t + j;
      xv[n][j] = i < p.m ? 1.0f : 0.0f;
      csp[n][j] = cs + min(i, p.m - 1) * L.nblk + s_begin;
      sxp[n][j] = sxs + min(i, p.m - 1) * L.nblk + s_begin;
    }
  }
  float acc[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
  int cj = 0;
  int64_t ctile = tile0;
  for (int t0 = 0; t0 < total; t0 += D) {
#pragma unroll
    for (int st = 0; st < D; ++st) {
      const int it = t0 + st;
      if (it >= total) break;  // warp-uniform
      const Chunk<BITS>(&cur)[2] = buf[st];
      __half2 nz[2], s2[2], zs2[2];
      float zfrac[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float zi = fminf(fmaxf(rintf(cur[r].z), -1024.0f), 1024.0f);
        zfrac[r] = cur[r].z - zi;
        nz[r] = __float2half2_rn(-zi);
        s2[r] = __float2half2_rn(cur[r].s);
        zs2[r] = __float2half2_rn(-zfrac[r] * cur[r].s);
      }
      const uint4* x4[NT];
#pragma unroll
      for (int n = 0; n < NT; ++n) x4[n] = xbase[n] + cj * xstep[n];
      float c[NT][4];
#pragma unroll
      for (int n = 0; n < NT; ++n) c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.0f;
      slab<BITS, PRE, NT, 0>(c, cur[0], cur[1], nz, s2, zs2, x4);
      slab<BITS, PRE, NT, 1>(c, cur[0], cur[1], nz, s2, zs2, x4);
      slab<BITS, PRE, NT, 2>(c, cur[0], cur[1], nz, s2, zs2, x4);
      slab<BITS, PRE, NT, 3>(c, cur[0], cur[1], nz, s2, zs2, x4);
      slab<BITS, PRE, NT, 4>(c, cur[0], cur[1], nz, s2, zs2, x4);
      slab<BITS, PRE, NT, 5>(c, cur[0], cur[1], nz, s2, zs2, x4);
      slab<BITS, PRE, NT, 6>(c, cur[0], cur[1], nz, s2, zs2, x4);
      slab<BITS, PRE, NT, 7>(c, cur[0], cur[1], nz, s2, zs2, x4);
      // c[n] = (row g | g + 8) x (token 8n + 2t | 8n + 2t + 1), sums of x' (q - round z) [s]
      // over the block.
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        const float cx0 = xv[n][0] * csp[n][0][cj], cx1 = xv[n][1] * csp[n][1][cj];
        float(&cn)[4] = c[n];
        float(&an)[4] = acc[n];
        if constexpr (PRE) {
          an[0] = fmaf(cx0, cn[0], an[0]), an[1] = fmaf(cx1, cn[1], an[1]);
          an[2] = fmaf(cx0, cn[2], an[2]), an[3] = fmaf(cx1, cn[3], an[3]);
        } else {
          if (p.asym) {
            const float sx0 = sxp[n][0][cj], sx1 = sxp[n][1][cj];
            cn[0] = fmaf(-zfrac[0], sx0, cn[0]), cn[1] = fmaf(-zfrac[0], sx1, cn[1]);
            cn[2] = fmaf(-zfrac[1], sx0, cn[2]), cn[3] = fmaf(-zfrac[1], sx1, cn[3]);
          }
          an[0] = fmaf(cur[0].s * cx0, cn[0], an[0]), an[1] = fmaf(cur[0].s * cx1, cn[1], an[1]);
          an[2] = fmaf(cur[1].s * cx0, cn[2], an[2]), an[3] = fmaf(cur[1].s * cx1, cn[3], an[3]);
        }
      }
      fetch_next(buf[st]);
      if (cj == T - 1) {  // the item's last step: reduce over the team, write
        if (ks > 1) {
          const int bar = 1 + warp / ks, nthr = 32 * ks;
#pragma unroll
          for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int r = 0; r < 4; ++r) s_red[warp][lane][4 * n + r] = acc[n][r];
          named_barrier(bar, nthr);
          if (ksi == 0)
#pragma unroll
            for (int n = 0; n < NT; ++n)
#pragma unroll
              for (int r = 0; r < 4; ++r) {
                float v = 0.0f;
                for (int w = warp; w < warp + ks; ++w) v += s_red[w][lane][4 * n + r];
                acc[n][r] = v;
              }
          named_barrier(bar, nthr);  // s_red is reused by the next item
        }
        if (ksi == 0) {
          const int64_t n0 = ctile * 16 + g;
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            if (!p.pair) {
#pragma unroll
              for (int r = 0; r < 4; ++r) {
                const int64_t n = n0 + 8 * (r >> 1);
                const int i = 8 * nt + 2 * t + (r & 1);
                if (n < p.N && i < p.m) {
                  float v = acc[nt][r] * ys[nt][r & 1];
                  if (p.bias) v += p.bias[n];
                  float* yp = p.y + i * p.ldy + n;
                  if (p.accumulate) v += *yp;
                  *yp = v;
                }
              }
            } else {  // rows 2j (gate) and 2j + 1 (up): the up row is in lane + 4
#pragma unroll
              for (int r = 0; r < 4; ++r) {
                const float up = __shfl_down_sync(0xffffffffu, acc[nt][r], 4);
                const int64_t n = n0 + 8 * (r >> 1);
                const int i = 8 * nt + 2 * t + (r & 1);
                if ((g & 1) == 0 && n + 1 < p.N && i < p.m) {
                  float gv = acc[nt][r] * ys[nt][r & 1], uv = up * ys[nt][r & 1];
                  if (p.bias) gv += p.bias[n], uv += p.bias[n + 1];
                  p.y[i * p.ldy + n / 2] = silu(gv) * uv;
                }
              }
            }
          }
        }
#pragma unroll
        for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
      }
      if (++cj == T) cj = 0, ctile += tile_stride;
    }
  }
}

template <int BITS, InputOp OP, bool PRE, int NT>
void launch_tc(QParams p, cudaStream_t s) {
  auto* kern = qbits_gemv_tc_kernel<BITS, OP, PRE, NT>;
  static const bool opted = [&] {
    ANYBIT_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kTcMaxSmem)));
    return true;
  }();
  (void)opted;
  const size_t shm = tc_stage_bytes(p.m, p.K);
  const TcLayout L = tc_layout(p.K);
  const int64_t tiles = (p.N + 15) / 16, warps = int64_t(sm_count()) * kTcWarps;
  // Split K over ks warps when that shortens the slowest warp: rounds of (tile, K slice)
  // items over the resident warps, each item ceil(nblk / ks) steps plus its reduction.
  p.ks = 1;
  double best = 1e30;
  for (int ks = 1; ks <= kTcWarps; ks *= 2) {
    if (ks > L.nblk) break;
    const double rounds = std::ceil(double(tiles) * ks / double(warps));
    const double cost = rounds * (std::ceil(double(L.nblk) / ks) + (ks > 1 ? 1.0 : 0.25));
    if (cost < best) best = cost, p.ks = ks;
  }
  // Every SM gets a block while there are more row tiles than SMs (tile slots are
  // interleaved over the blocks), so the busy warps spread over the whole chip.
  const int64_t grid = std::min<int64_t>(tiles, sm_count());
  launch_pdl(kern, unsigned(grid), kTcThreads, shm, s, p);
}

template <int BITS, bool PRE, int NT>
void launch_tc_op(const QParams& p, InputOp op, cudaStream_t s) {
  switch (op) {
    case InputOp::None: launch_tc<BITS, InputOp::None, PRE, NT>(p, s); break;
    case InputOp::RmsNorm: launch_tc<BITS, InputOp::RmsNorm, PRE, NT>(p, s); break;
    case InputOp::SiluMul: launch_tc<BITS, InputOp::SiluMul, PRE, NT>(p, s); break;
  }
}

// One token tile (m <= 8) or two (m <= 16).
template <int BITS>
void launch_tc_bits(const QParams& p, InputOp op, bool pre, cudaStream_t s) {
  if (p.m <= 8) pre ? launch_tc_op<BITS, true, 1>(p, op, s) : launch_tc_op<BITS, false, 1>(p, op, s);
  else pre ? launch_tc_op<BITS, true, 2>(p, op, s) : launch_tc_op<BITS, false, 2>(p, op, s);
}

}  // namespace

namespace qdetail {

int gemv_tc_max_rows(int64_t K) {
  int m = kTcMaxM;
  while (m > 0 && tc_stage_bytes(m, K) > kTcMaxSmem) --m;
  return m;
}

void gemv_qbits_tc(const LinearArgs& a, const QbitsDeviceWeight& w, cudaStream_t s) {
  QParams p = gemv_params(a, w);
  if (p.m < 1 || p.m > gemv_tc_max_rows(w.cols)) fail("CUDA gemv_qbits_tc: {} rows do not fit (K = {})", p.m, w.cols);
  if (p.cpg_shift < 0 || p.cpg > 4) fail("CUDA gemv_qbits_tc: group {} is not 32, 64 or 128", w.group);
  // Scales applied after the mma only where a 128-column step is exactly one group.
  const bool pre = w.group != 128;
  with_bits(w.bits, [&](auto b) { launch_tc_bits<decltype(b)::value>(p, a.op, pre, s); });
  check_launch("gemv_qbits_tc");
}

}  // namespace qdetail
}  // namespace anybit::cuda
