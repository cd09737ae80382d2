// Decode attention on the tensor cores for f16 / bf16 KV caches (FlashDecoding with
// mma.sync.m16n8k16, fp32 accumulation).
//
// Blocks are (split, kv head, row) as in the SIMT kernel, with the split count cut to what
// fills the GPU once; each of the 4 warps streams 16-key tiles of its kv head through its
// own cp.async ring in shared memory (a tile of 16 positions is 16 contiguous K rows and 16
// contiguous V rows in a cache block). The group's G <= 8 query heads are the n = 8 side of
// both products, so the 16-row side carries keys or head dimensions and nothing is padding:
//   scores  S^T[16 keys x 8 heads] = K[16 x hd] . Q^T   (K through ldmatrix)
//   output  O^T[hd x 8 heads]     += V^T[hd x 16] . P^T (V through ldmatrix.trans; P^T is
//           the score accumulators transposed in registers by movmatrix).
// Softmax runs in base 2 with a lazily moved maximum (FlashDecoding++'s unified-max idea):
// a row's reference maximum only moves, rescaling O and the sum, when a tile's maximum
// exceeds it by more than 2^8; otherwise the probabilities are exp2(s - m) <= 2^8, which
// f16, bf16 and the fp32 sums hold exactly enough. The reference is exact again at the
// merge, so the bound only trades rescaling work for range.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/attention_cuda.cuh"
#include "kernels/cuda_common.cuh"

namespace anybit::cuda {
namespace {

using namespace detail;

constexpr int kWarps = 4;
constexpr int kTile = 16;    // keys per warp step
constexpr int kStages = 2;   // cp.async ring depth per warp: one tile loads while one is used
constexpr float kLazyMax = 8.0f;  // log2 of the largest probability before the maximum moves

template <DType D>
struct MmaOps;
template <>
struct MmaOps<DType::F16> {
  __device__ static uint32_t pack(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  __device__ static void mma(float (&c)[4], const uint32_t (&x)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(x[0]), "r"(x[1]), "r"(x[2]), "r"(x[3]), "r"(b0), "r"(b1));
  }
};
template <>
struct MmaOps<DType::BF16> {
  __device__ static uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  __device__ static void mma(float (&c)[4], const uint32_t (&x)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(x[0]), "r"(x[1]), "r"(x[2]), "r"(x[3]), "r"(b0), "r"(b1));
  }
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16 bytes global -> shared; src_bytes 0 fills zeros (keys past the context).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, uint32_t src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Transposes the 8x8 16-bit matrix whose row (lane / 4) columns 2 (lane % 4) + {0, 1} this
// lane holds, so that it then holds column (lane / 4), rows 2 (lane % 4) + {0, 1}.
__device__ __forceinline__ uint32_t movmatrix_trans(uint32_t x) {
  uint32_t r;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(r) : "r"(x));
  return r;
}

// Shared-memory row stride of a staged tile in 16-bit elements: 16 bytes of padding put
// the 8 rows one ldmatrix reads in 8 different bank quads.
template <int HD>
constexpr int kRowElems = HD + 8;
template <int HD>
constexpr int kStageElems = 2 * kTile * kRowElems<HD>;  // K then V
template <int HD>
constexpr size_t kStageBytes = size_t(kWarps) * kStages * kStageElems<HD> * 2;
template <int HD>
constexpr size_t kMergeBytes = size_t(kWarps) * kAttnMaxGroup * (HD + 2) * 4;
template <int HD>
constexpr size_t kSmemBytes = kStageBytes<HD> > kMergeBytes<HD> ? kStageBytes<HD> : kMergeBytes<HD>;

template <DType D, int HD>
__global__ void __launch_bounds__(kWarps * 32) attn_decode_mma_kernel(const AttentionArgs a) {
  using Ops = MmaOps<D>;
  constexpr int KS = HD / 16;              // 16-column steps over head_dim
  constexpr int CH = kTile * HD / 8 / 32;  // 16-byte chunks per lane per tile, K and V each
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t* const smem = reinterpret_cast<uint16_t*>(smem_raw);

  pdl_wait();
  pdl_trigger();
  const int sp = blockIdx.x;
  const int64_t kvh = blockIdx.y, t = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int64_t nkv = a.kv.n_kv_heads, bs = a.kv.block_size;
  const int G = int(a.n_heads / nkv);
  const int64_t n_ctx = int64_t(a.tok_pos[t]) + 1;
  const int64_t start = a.window > 0 ? max(int64_t(0), n_ctx - a.window) : 0;
  const int64_t chunk = max(int64_t(16), ((n_ctx - start + a.n_splits - 1) / a.n_splits + 15) / 16 * 16);
  const int64_t lo = min(n_ctx, start + int64_t(sp) * chunk), hi = min(n_ctx, lo + chunk);
  const int32_t* btab = a.block_tables + int64_t(a.tok_seq[t]) * a.max_blocks;
  const int64_t first = lo & ~int64_t(kTile - 1);
  const int64_t n_tiles = lo < hi ? (hi - first + kTile - 1) / kTile : 0;
  const int64_t my_tiles = n_tiles > warp ? (n_tiles - warp + kWarps - 1) / kWarps : 0;
  const uint16_t* kv = static_cast<const uint16_t*>(a.kv.base);

  // The group's query heads are the 8 columns (n) of both products, so no tensor-core row
  // is wasted on padding: S^T = K . Q^T and O^T = V^T . P^T. Q^T is the B fragment:
  // lane (g, tq) holds head g's columns 2tq, 2tq+1 (+8) of each 16-column step.
  uint32_t qb[KS][2];
  {
    const bool live = g < G;
    const float* qrow = a.q + t * a.ldq + (kvh * G + (live ? g : 0)) * HD;
#pragma unroll
    for (int s = 0; s < KS; ++s) {
      const int d = 16 * s + 2 * tq;
      qb[s][0] = Ops::pack(live ? qrow[d] : 0.0f, live ? qrow[d + 1] : 0.0f);
      qb[s][1] = Ops::pack(live ? qrow[d + 8] : 0.0f, live ? qrow[d + 9] : 0.0f);
    }
  }

  uint16_t* const ring = smem + size_t(warp) * kStages * kStageElems<HD>;
  auto issue = [&](int64_t li, int stage) {
    const int64_t kt = first + (warp + li * kWarps) * kTile;
    const int64_t base = kv_row(a.kv, btab[kt / bs], a.layer, 0, kvh, kt % bs);
    const int64_t v_off = nkv * bs * HD;
    uint16_t* dst = ring + stage * kStageElems<HD>;
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      const int e = lane + 32 * c, row = e / (HD / 8), col = (e % (HD / 8)) * 8;
      const uint32_t n = kt + row < hi ? 16u : 0u;
      const int64_t src = n ? base + int64_t(row) * HD + col : base;
      cp_async16(smem_addr(dst + row * kRowElems<HD> + col), kv + src, n);
      cp_async16(smem_addr(dst + (kTile + row) * kRowElems<HD> + col), kv + src + v_off, n);
    }
  };

  // O^T accumulators: o[j] holds dims 16j + g (regs 0, 1) and 16j + g + 8 (regs 2, 3) of
  // heads 2tq (regs 0, 2) and 2tq + 1 (regs 1, 3).
  float o[KS][4];
#pragma unroll
  for (int j = 0; j < KS; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const float scale2 = a.scale * 1.4426950408889634f;
  const int mi = lane >> 3, mr = lane & 7;  // which 8x8 matrix this lane addresses, and its row

#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < my_tiles) issue(st, st);
    cp_async_commit();
  }
  for (int64_t li = 0; li < my_tiles; ++li) {
    if (li + kStages - 1 < my_tiles) issue(li + kStages - 1, int((li + kStages - 1) % kStages));
    cp_async_commit();
    cp_async_wait<kStages - 1>();
    __syncwarp();
    const uint16_t* Ks = ring + (li % kStages) * kStageElems<HD>;
    const uint16_t* Vs = Ks + kTile * kRowElems<HD>;
    const int64_t kt = first + (warp + li * kWarps) * kTile;

    // S^T[16 keys x 8 heads]: lane (g, tq) gets keys g and g + 8 of heads 2tq, 2tq + 1.
    float sc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    {
      const uint32_t addr = smem_addr(Ks + ((mi & 1) * 8 + mr) * kRowElems<HD> + (mi >> 1) * 8);
#pragma unroll
      for (int s = 0; s < KS; ++s) {
        uint32_t ka[4];
        ldmatrix_x4(ka, addr + s * 32);
        Ops::mma(sc, ka, qb[s][0], qb[s][1]);
      }
    }
    const bool in0 = kt + g >= lo && kt + g < hi, in1 = kt + g + 8 >= lo && kt + g + 8 < hi;
    float sv[4];
    sv[0] = in0 ? sc[0] * scale2 : -INFINITY;
    sv[1] = in0 ? sc[1] * scale2 : -INFINITY;
    sv[2] = in1 ? sc[2] * scale2 : -INFINITY;
    sv[3] = in1 ? sc[3] * scale2 : -INFINITY;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = fmaxf(sv[h], sv[h + 2]);
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
      if (mx > m[h] + kLazyMax) {
        const float r = exp2f(m[h] - mx);  // 0 when m was -inf
        l[h] *= r;
#pragma unroll
        for (int j = 0; j < KS; ++j) o[j][h] *= r, o[j][h + 2] *= r;
        m[h] = mx;
      }
    }
    float p[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) p[i] = m[i & 1] == -INFINITY ? 0.0f : exp2f(sv[i] - m[i & 1]);
    l[0] += p[0] + p[2];
    l[1] += p[1] + p[3];
    // P^T as the B fragment: transpose the two 8x8 (keys x heads) halves in registers.
    const uint32_t pb0 = movmatrix_trans(Ops::pack(p[0], p[1])), pb1 = movmatrix_trans(Ops::pack(p[2], p[3]));
    {
      const uint32_t addr = smem_addr(Vs + ((mi >> 1) * 8 + mr) * kRowElems<HD> + (mi & 1) * 8);
#pragma unroll
      for (int j = 0; j < KS; ++j) {
        uint32_t va[4];
        ldmatrix_x4_trans(va, addr + j * 32);
        Ops::mma(o[j], va, pb0, pb1);
      }
    }
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
  float* s_m = reinterpret_cast<float*>(smem_raw);
  float* s_l = s_m + kWarps * kAttnMaxGroup;
  float* s_o = s_l + kWarps * kAttnMaxGroup;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int head = 2 * tq + h;
    if (head >= G) continue;
    if (g == 0) s_m[warp * kAttnMaxGroup + head] = m[h], s_l[warp * kAttnMaxGroup + head] = l[h];
    float* row = s_o + (warp * kAttnMaxGroup + head) * HD;
#pragma unroll
    for (int j = 0; j < KS; ++j) row[16 * j + g] = o[j][h], row[16 * j + g + 8] = o[j][h + 2];
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
    if (a.n_splits == 1) {
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

template <DType D, int HD>
int64_t launch_mma(const AttentionArgs& a, cudaStream_t s) {
  static const int blocks_per_sm = [] {
    check(cudaFuncSetAttribute(attn_decode_mma_kernel<D, HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               int(kSmemBytes<HD>)),
          "cudaFuncSetAttribute (attention_decode_mma)");
    int n = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, attn_decode_mma_kernel<D, HD>, kWarps * 32,
                                                        kSmemBytes<HD>),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor (attention_decode_mma)");
    return std::max(1, n);
  }();
  AttentionArgs b = a;
  b.n_splits = one_wave_splits(a, blocks_per_sm);
  const dim3 grid(unsigned(b.n_splits), unsigned(b.kv.n_kv_heads), unsigned(b.n_tok));
  launch_pdl(attn_decode_mma_kernel<D, HD>, grid, dim3(kWarps * 32), kSmemBytes<HD>, s, b);
  return b.n_splits;
}

template <DType D>
int64_t launch_dtype(const AttentionArgs& a, cudaStream_t s) {
  switch (a.kv.head_dim) {
    case 32: return launch_mma<D, 32>(a, s);
    case 64: return launch_mma<D, 64>(a, s);
    case 96: return launch_mma<D, 96>(a, s);
    case 128: return launch_mma<D, 128>(a, s);
    default: fail("CUDA attention_decode_mma: head_dim {} (32, 64, 96 or 128)", a.kv.head_dim);
  }
}

}  // namespace

bool attention_decode_mma_supported(const AttentionArgs& a) {
  const int64_t hd = a.kv.head_dim;
  return (a.kv.dtype == DType::F16 || a.kv.dtype == DType::BF16) && (hd == 32 || hd == 64 || hd == 96 || hd == 128) &&
         a.kv.block_size % kTile == 0 && a.kv.n_kv_heads > 0 && a.n_heads % a.kv.n_kv_heads == 0 &&
         a.n_heads / a.kv.n_kv_heads <= kAttnMaxGroup;
}

void attention_decode_mma(const AttentionArgs& a, cudaStream_t s) {
  if (a.n_tok <= 0) return;
  check_decode_args(a);
  if (!attention_decode_mma_supported(a))
    fail("CUDA attention_decode_mma: needs an f16/bf16 cache, head_dim 32/64/96/128, block_size % 16 == 0 "
         "(got {}, head_dim {}, block_size {})",
         dtype_name(a.kv.dtype), a.kv.head_dim, a.kv.block_size);
  AttentionArgs b = a;
  b.n_splits = a.kv.dtype == DType::F16 ? launch_dtype<DType::F16>(a, s) : launch_dtype<DType::BF16>(a, s);
  check_launch("attention_decode_mma");
  if (b.n_splits > 1) attention_combine(b, s);
}

}  // namespace anybit::cuda
