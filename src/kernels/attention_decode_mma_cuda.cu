// Decode attention on the tensor cores for f16 / bf16 / int8 KV caches (FlashDecoding with
// mma.sync.m16n8k16, f16 or bf16 inputs, fp32 accumulation).
//
// Blocks are (split, kv head, row) as in the SIMT kernel, with the split count cut to what
// fills the GPU once; each of the 4 warps streams 16-key tiles of its kv head through its
// own cp.async ring in shared memory (a tile of 16 positions is 16 contiguous K rows and 16
// contiguous V rows in a cache block). The group's G <= 8 query heads are the n = 8 side of
// both products, so the 16-row side carries keys or head dimensions and nothing is padding:
//   scores  S^T[16 keys x 8 heads] = K[16 x hd] . Q^T
//   output  O^T[hd x 8 heads]     += V^T[hd x 16] . P^T (P^T is the score accumulators
//           transposed in registers by movmatrix).
// How a tile is staged and turned into fragments depends on the cache dtype: the tile
// policies of attention_mma_tiles.cuh.
// With the fused RoPE (f16/bf16 caches) a block requests its first tiles before waiting on the
// q|k|v GEMV; the new position's row, which that kernel produces, is written into its staged
// tile here rather than read back from the cache.
// Softmax runs in base 2 with a lazily moved maximum (FlashDecoding++'s unified-max idea):
// a row's reference maximum only moves, rescaling O and the sum, when a tile's maximum
// exceeds it by more than 2^8; otherwise the probabilities are exp2(s - m) <= 2^8, which
// f16, bf16 and the fp32 sums hold exactly enough. The reference is exact again at the
// merge, so the bound only trades rescaling work for range.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/attention_cuda.cuh"
#include "kernels/attention_mma_tiles.cuh"
#include "kernels/cuda_common.cuh"

namespace anybit::cuda {
namespace {

using namespace detail;

constexpr int kWarps = 4;
constexpr float kLazyMax = 8.0f;  // log2 of the largest probability before the maximum moves

template <class Tiles, int HD>
constexpr size_t smem_bytes() {
  const size_t stages = size_t(kWarps) * Tiles::kStages * Tiles::kStageBytes;
  const size_t merge = size_t(kWarps) * kAttnMaxGroup * (HD + 2) * 4;
  return stages > merge ? stages : merge;
}

template <class Tiles, int HD>
__global__ void __launch_bounds__(kWarps * 32) attn_decode_mma_kernel(const AttentionArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int sp = blockIdx.x;
  const int64_t kvh = blockIdx.y, t = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int64_t bs = a.kv.block_size;
  const int G = int(a.n_heads / a.kv.n_kv_heads);
  // Positions, block tables and the cache rows of earlier steps were all written before this
  // step's first kernel: they may be read before the wait on the q|k|v GEMV.
  const DecodeSplit range = decode_split(a, t, sp);
  if (range.lo >= range.hi) return;  // past the context: the merge does not read this split
  const int64_t n_ctx = int64_t(a.tok_pos[t]) + 1, lo = range.lo, hi = range.hi;
  const int32_t* btab = a.block_tables + int64_t(a.tok_seq[t]) * a.max_blocks;
  const int64_t first = lo & ~int64_t(kTile - 1);
  const int64_t n_tiles = lo < hi ? (hi - first + kTile - 1) / kTile : 0;
  const int64_t my_tiles = n_tiles > warp ? (n_tiles - warp + kWarps - 1) / kWarps : 0;
  const unsigned char* kv = static_cast<const unsigned char*>(a.kv.base);
  const int64_t row_bytes = a.kv.row_bytes();
  unsigned char* const ring = smem + size_t(warp) * Tiles::kStages * Tiles::kStageBytes;
  auto issue = [&](int64_t li, int stage) {
    const int64_t kt = first + (warp + li * kWarps) * kTile, blk = btab[kt / bs], slot = kt % bs;
    const unsigned char* kh = kv + a.kv.head_offset(blk, a.layer, 0, kvh);
    const unsigned char* vh = kv + a.kv.head_offset(blk, a.layer, 1, kvh);
    const int64_t scales = bs * row_bytes + slot * 4;  // int8 caches only
    Tiles::issue(ring + stage * Tiles::kStageBytes, kh + slot * row_bytes, vh + slot * row_bytes, kh + scales,
                 vh + scales, int(min(int64_t(kTile), hi - kt)), lane);
  };
  auto prologue = [&] {
#pragma unroll
    for (int st = 0; st < Tiles::kStages - 1; ++st) {
      if (st < my_tiles) issue(st, st);
      cp_async_commit();
    }
  };

  // With the fused RoPE the new position's K and V come from this kernel, so the first tiles
  // are requested while the q|k|v GEMV still runs (at short contexts, every tile): the tile
  // that holds the new position is patched in shared memory once its row is known.
  constexpr int half = HD / 2;
  __shared__ float s_q[kAttnMaxGroup * HD], s_kv[2][HD], s_cs[2][half];
  const bool early = Tiles::kPatchable && a.rope_inv_freq != nullptr;
  if (early) prologue();
  if (a.rope_inv_freq) {  // the angles need only the position: their cos/sin before the wait too
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
      double sn, cs;
      sincos(double(float(n_ctx - 1) * a.rope_inv_freq[i]), &sn, &cs);
      s_cs[0][i] = float(cs), s_cs[1][i] = float(sn);
    }
    __syncthreads();
  }
  pdl_wait();
  pdl_trigger();

  const float* qg = a.q + t * a.ldq + kvh * G * HD;  // the group's q rows
  if (a.rope_inv_freq) {  // fused RoPE: rotate the group's q; the block holding the new position writes its k, v
    const bool has_new = n_ctx - 1 >= lo && n_ctx - 1 < hi;  // block-uniform
    // Every load first (q pairs, and the new k pair and v element), then the arithmetic.
    constexpr int QPT = (kAttnMaxGroup * half + kWarps * 32 - 1) / (kWarps * 32);
    float q0[QPT], q1[QPT];
#pragma unroll
    for (int j = 0; j < QPT; ++j) {
      const int e = threadIdx.x + j * kWarps * 32, gg = e / half, i = e % half;
      q0[j] = e < G * half ? qg[gg * HD + i] : 0.0f;
      q1[j] = e < G * half ? qg[gg * HD + i + half] : 0.0f;
    }
    const float* krow = a.q + t * a.ldq + a.n_heads * HD + kvh * HD;
    const float* vrow = krow + a.kv.n_kv_heads * HD;
    float k0 = 0.0f, k1 = 0.0f, v = 0.0f;
    if (has_new) {  // kWarps * 32 >= HD: one k pair and one v element per thread at most
      if (threadIdx.x < half) k0 = krow[threadIdx.x], k1 = krow[threadIdx.x + half];
      if (threadIdx.x < HD) v = vrow[threadIdx.x];
    }
#pragma unroll
    for (int j = 0; j < QPT; ++j) {
      const int e = threadIdx.x + j * kWarps * 32, gg = e / half, i = e % half;
      if (e < G * half) rope_rotate(&s_q[gg * HD + i], &s_q[gg * HD + i + half], q0[j], q1[j], s_cs[0][i], s_cs[1][i]);
    }
    if (has_new) {
      if (threadIdx.x < half)
        rope_rotate(&s_kv[0][threadIdx.x], &s_kv[0][threadIdx.x + half], k0, k1, s_cs[0][threadIdx.x],
                    s_cs[1][threadIdx.x]);
      if (threadIdx.x < HD) s_kv[1][threadIdx.x] = v;
      __syncthreads();
      const int64_t slot = a.slot[t];
      if (warp < 2) store_kv_row<Tiles::kDType>(a.kv, a.kv.head_offset(slot / bs, a.layer, warp, kvh), slot % bs, s_kv[warp], lane);
      const int64_t tile = (n_ctx - 1 - first) / kTile;  // the new position's tile, owned by warp tile % kWarps
      bool patched = false;
      if constexpr (Tiles::kPatchable) {
        patched = early && tile / kWarps < Tiles::kStages - 1;
        if (patched && tile % kWarps == warp) {  // staged before the row existed: write it into the stage
          cp_async_wait<0>();
          __syncwarp();
          Tiles::patch_row(ring + (tile / kWarps) * Tiles::kStageBytes, int(n_ctx - 1 - (first + tile * kTile)),
                           s_kv[0], s_kv[1], lane);
          __syncwarp();
        }
      }
      if (!patched) __threadfence();  // the new rows are in memory before this block's tile copies read them
    }
    __syncthreads();
    qg = s_q;
  }
  Tiles tiles;
  tiles.init(qg + (g < G ? g : 0) * HD, g < G, tq);

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // heads 2tq, 2tq + 1
  const float scale2 = a.scale * 1.4426950408889634f;
  if (!early) prologue();
  for (int64_t li = 0; li < my_tiles; ++li) {
    if (li + Tiles::kStages - 1 < my_tiles) issue(li + Tiles::kStages - 1, int((li + Tiles::kStages - 1) % Tiles::kStages));
    cp_async_commit();
    cp_async_wait<Tiles::kStages - 1>();
    __syncwarp();
    const unsigned char* st = ring + (li % Tiles::kStages) * Tiles::kStageBytes;
    const int64_t kt = first + (warp + li * kWarps) * kTile;

    float sc[4];
    tiles.scores(st, lane, sc);
    const bool in0 = kt + g >= lo && kt + g < hi, in1 = kt + g + 8 >= lo && kt + g + 8 < hi;
    const float f0 = scale2 * Tiles::key_scale(st, g), f1 = scale2 * Tiles::key_scale(st, g + 8);
    float sv[4];
    sv[0] = in0 ? sc[0] * f0 : -INFINITY;
    sv[1] = in0 ? sc[1] * f0 : -INFINITY;
    sv[2] = in1 ? sc[2] * f1 : -INFINITY;
    sv[3] = in1 ? sc[3] * f1 : -INFINITY;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = fmaxf(sv[h], sv[h + 2]);
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
      if (mx > m[h] + kLazyMax) {
        const float r = exp2f(m[h] - mx);  // 0 when m was -inf
        l[h] *= r;
        tiles.rescale(h, r);
        m[h] = mx;
      }
    }
    float p[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) p[i] = m[i & 1] == -INFINITY ? 0.0f : exp2f(sv[i] - m[i & 1]);
    l[0] += p[0] + p[2];
    l[1] += p[1] + p[3];
    tiles.accumulate(st, lane, p);
    __syncwarp();  // the stage is reissued next iteration
  }
  cp_async_wait<0>();
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 4);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 8);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 16);
  }

  // Merge the warps (their rings are dead now: the merge area reuses the memory).
  __syncthreads();
  float* s_m = reinterpret_cast<float*>(smem);
  float* s_l = s_m + kWarps * kAttnMaxGroup;
  float* s_o = s_l + kWarps * kAttnMaxGroup;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int head = 2 * tq + h;
    if (head >= G) continue;
    if (g == 0) s_m[warp * kAttnMaxGroup + head] = m[h], s_l[warp * kAttnMaxGroup + head] = l[h];
    tiles.store(s_o + (warp * kAttnMaxGroup + head) * HD, h, g);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < G * HD; e += blockDim.x) {
    const int gg = e / HD, d = e % HD;
    const int64_t h = kvh * G + gg;
    float M = -INFINITY;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, s_m[w * kAttnMaxGroup + gg]);
    float L = 0.0f, A = 0.0f;
    if (M != -INFINITY)
      for (int w = 0; w < kWarps; ++w) {
        const float mw = s_m[w * kAttnMaxGroup + gg];
        if (mw == -INFINITY) continue;
        const float f = exp2f(mw - M);
        L += s_l[w * kAttnMaxGroup + gg] * f;
        A += s_o[(w * kAttnMaxGroup + gg) * HD + d] * f;
      }
    if (range.n_active == 1) {
      a.out[t * a.ldo + h * HD + d] = A / L;
    } else {
      // The combine kernel works in natural-log units.
      float* P = a.partial + ((t * a.n_heads + h) * a.n_splits + sp) * (HD + 2);
      P[2 + d] = A;
      if (d == 0) P[0] = M * 0.6931471805599453f, P[1] = L;
    }
  }
}

// Splits actually used: as many as fill the resident blocks once (at most a.n_splits, which
// sized the workspace). One wave of equal blocks beats several waves with a ragged last one,
// and fewer splits mean fewer partial rows to merge.
int64_t one_wave_splits(const AttentionArgs& a, int blocks_per_sm) {
  const int64_t rows = a.n_tok * a.kv.n_kv_heads, resident = int64_t(sm_count()) * blocks_per_sm;
  return std::max<int64_t>(1, std::min<int64_t>(a.n_splits, resident / std::max<int64_t>(1, rows)));
}

template <class Tiles, int HD>
int64_t launch_mma(const AttentionArgs& a, cudaStream_t s) {
  constexpr size_t shm = smem_bytes<Tiles, HD>();
  static const int blocks_per_sm = [] {
    check(cudaFuncSetAttribute(attn_decode_mma_kernel<Tiles, HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               int(shm)),
          "cudaFuncSetAttribute (attention_decode_mma)");
    int n = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, attn_decode_mma_kernel<Tiles, HD>, kWarps * 32, shm),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor (attention_decode_mma)");
    return std::max(1, n);
  }();
  AttentionArgs b = a;
  b.n_splits = one_wave_splits(a, blocks_per_sm);
  const dim3 grid(unsigned(b.n_splits), unsigned(b.kv.n_kv_heads), unsigned(b.n_tok));
  launch_pdl(attn_decode_mma_kernel<Tiles, HD>, grid, dim3(kWarps * 32), shm, s, b);
  return b.n_splits;
}

template <DType D>
int64_t launch_half(const AttentionArgs& a, cudaStream_t s) {
  switch (a.kv.head_dim) {
    case 32: return launch_mma<HalfTiles<D, 32>, 32>(a, s);
    case 64: return launch_mma<HalfTiles<D, 64>, 64>(a, s);
    case 96: return launch_mma<HalfTiles<D, 96>, 96>(a, s);
    default: return launch_mma<HalfTiles<D, 128>, 128>(a, s);
  }
}

}  // namespace

bool attention_decode_mma_supported(const AttentionArgs& a) {
  const int64_t hd = a.kv.head_dim;
  const bool shape = a.kv.dtype == DType::I8 ? (hd == 64 || hd == 128)
                                             : (hd == 32 || hd == 64 || hd == 96 || hd == 128);
  return (a.kv.dtype == DType::F16 || a.kv.dtype == DType::BF16 || a.kv.dtype == DType::I8) && shape &&
         a.kv.block_size % kTile == 0 && a.kv.n_kv_heads > 0 && a.n_heads % a.kv.n_kv_heads == 0 &&
         a.n_heads / a.kv.n_kv_heads <= kAttnMaxGroup;
}

void attention_decode_mma(const AttentionArgs& a, cudaStream_t s) {
  if (a.n_tok <= 0) return;
  check_decode_args(a);
  if (!attention_decode_mma_supported(a))
    fail("CUDA attention_decode_mma: needs an f16/bf16 cache with head_dim 32/64/96/128 or an i8 cache with "
         "head_dim 64/128, and block_size % 16 == 0 (got {}, head_dim {}, block_size {})",
         dtype_name(a.kv.dtype), a.kv.head_dim, a.kv.block_size);
  AttentionArgs b = a;
  switch (a.kv.dtype) {
    case DType::F16: b.n_splits = launch_half<DType::F16>(a, s); break;
    case DType::BF16: b.n_splits = launch_half<DType::BF16>(a, s); break;
    default:
      b.n_splits = a.kv.head_dim == 64 ? launch_mma<Int8Tiles<64>, 64>(a, s) : launch_mma<Int8Tiles<128>, 128>(a, s);
      break;
  }
  check_launch("attention_decode_mma");
  if (b.n_splits > 1) attention_combine(b, s);
}

}  // namespace anybit::cuda
