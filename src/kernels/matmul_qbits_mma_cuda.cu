// W{2..8}A16 GEMM on the tensor cores for the QBITS format, for batched decode and short
// prefill chunks (kGemvMaxRows < m <= kMmaMaxRows where the tensor-core GEMV does not take
// the rows; linear_qbits decides): the weights are read once, in their
// packed form, and dequantized in registers straight into mma.sync fragments. The
// alternative (dequantize every matrix to bf16 in memory, then cuBLAS) moves ~9x the
// bytes of the 4-bit weights per step.
//
// Design, and why:
// - mma.sync.m16n8k16 with the weights as the A operand (16 weight rows x 16 columns) and
//   the activations as B (16 columns x 8 tokens): m is small here, so tokens are padded
//   to multiples of 8, not 16. Lane (g, t) = (lane / 4, lane % 4) needs, per 32-column
//   chunk, the column pairs t, t+4, t+8, t+12 of rows g and g+8; in the pair-order layout
//   those four pairs of a width-W plane sit at one lane-dependent shift in W words, so a
//   shift and a mask per plane give both codes of a pair in the two halves of a word.
// - Dequantization in f16x2: (1024 + q) by OR-ing the codes under the exponent of 1024,
//   q - round(z) exactly by one HSUB2, then one HFMA2 by the scale (and the fractional
//   part of an asymmetric zero): one rounding to f16 per weight (2^-11 relative).
// - x is prepared once per call (qbits_mma_prepare): op(x) * (1/input_scale), scaled per
//   token row by a power of two so |x'| <= 1 (no f16 overflow), stored as f16. A block
//   stages a [tokens x 256] slice of it in shared memory for its 4 warps (64 weight rows).
// - Split-K over grid.y when the weight has too few rows to fill the GPU; partial sums go
//   to scratch and one reduction applies the row scale, bias and accumulate, in a fixed
//   order (results do not depend on the schedule).
#include <cuda_fp16.h>

#include <algorithm>

#include "core/error.h"
#include "kernels/qbits_cuda_common.cuh"

namespace anybit::cuda {
namespace {

using namespace detail;
using namespace qdetail;

constexpr int kMmaWarps = 4;                   // 16 weight rows each
constexpr int kMmaRows = 16 * kMmaWarps;       // weight rows per block
constexpr int kMmaKB = 256;                    // columns of x staged at a time
constexpr int kMmaLd = kMmaKB + 8;             // padded row of the staged x (no bank conflicts)
constexpr int kMaxSplits = 16;

struct MmaParams {
  QParams w;            // weight part (weight_params)
  const __half* xh;     // [m][K] prepared x'
  int m;
  int64_t k_per_split;  // columns per grid.y slice, a multiple of kMmaKB
  float* partial;       // [splits][m][N]
};

// Codes of pair 4j + t of a chunk, both halves: per plane of width W, pair pi lies in word
// pi / (16 / W) at bit W * (pi % (16 / W)) of each half (plane_bit in qbits_cuda_pack.cpp).
template <int BITS, int J>
__device__ __forceinline__ uint32_t pair_codes(const uint32_t* w, int t) {
  uint32_t v = 0;
  int base = 0;
#pragma unroll
  for (int pl = 0; pl < plane_count(BITS); ++pl) {
    const int W = plane_width(BITS, pl);
    const uint32_t mask = ((1u << W) - 1u) * 0x00010001u;
    uint32_t f;
    if (W == 4) f = w[base + J] >> (4 * t);
    else if (W == 2) f = w[base + J / 2] >> (8 * (J % 2) + 2 * t);
    else f = w[base] >> (4 * J + t);
    v |= (f & mask) << plane_shift(BITS, pl);
    base += W;
  }
  return v;
}

__device__ __forceinline__ uint32_t h2_bits(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }
__device__ __forceinline__ __half2 bits_h2(uint32_t u) { return *reinterpret_cast<__half2*>(&u); }

// The four A registers of one chunk's two k16 slabs for rows (g, g + 8): a[slab][reg].
template <int BITS>
__device__ __forceinline__ void dequant_fragments(const Chunk<BITS>& ca, const Chunk<BITS>& cb, int t,
                                                  uint32_t (&a)[2][4]) {
  __half2 off[2], sc[2], zf[2];
  const Chunk<BITS>* c[2] = {&ca, &cb};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float zr = rintf(c[r]->z);
    off[r] = __float2half2_rn(1024.0f + zr);
    sc[r] = __float2half2_rn(c[r]->s);
    zf[r] = __float2half2_rn(-(c[r]->z - zr) * c[r]->s);
  }
#define ANYBIT_DQ(J)                                                                                \
  {                                                                                                 \
    _Pragma("unroll") for (int r = 0; r < 2; ++r) {                                                 \
      const __half2 q = __hsub2(bits_h2(pair_codes<BITS, J>(c[r]->w, t) | 0x64006400u), off[r]);    \
      a[(J) / 2][2 * ((J) % 2) + r] = h2_bits(__hfma2(q, sc[r], zf[r]));                            \
    }                                                                                               \
  }
  ANYBIT_DQ(0) ANYBIT_DQ(1) ANYBIT_DQ(2) ANYBIT_DQ(3)
#undef ANYBIT_DQ
}

__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// NT tiles of 8 tokens (m <= 8 * NT). grid = (row blocks, K splits).
template <int BITS, int NT>
__global__ void __launch_bounds__(32 * kMmaWarps) qbits_mma_kernel(const MmaParams p) {
  __shared__ __align__(16) __half xs[8 * NT][kMmaLd];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t N = p.w.N, K = p.w.K;
  const int64_t row_a = int64_t(blockIdx.x) * kMmaRows + warp * 16 + g, row_b = row_a + 8;
  // Rows past N load row N - 1 (valid memory) and are not stored.
  const int64_t la = row_a < N ? row_a : N - 1, lb = row_b < N ? row_b : N - 1;
  const int64_t k0 = int64_t(blockIdx.y) * p.k_per_split, k1 = K < k0 + p.k_per_split ? K : k0 + p.k_per_split;
  float acc[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

  pdl_wait();
  for (int64_t kb = k0; kb < k1; kb += kMmaKB) {
    const int cols = k1 - kb < kMmaKB ? int(k1 - kb) : kMmaKB;
    __syncthreads();  // the previous slice is consumed
    for (int i = threadIdx.x; i < 8 * NT * (kMmaKB / 8); i += 32 * kMmaWarps) {
      const int tok = i / (kMmaKB / 8), c8 = (i % (kMmaKB / 8)) * 8;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (tok < p.m && c8 < cols) v = *reinterpret_cast<const uint4*>(p.xh + tok * K + kb + c8);
      *reinterpret_cast<uint4*>(&xs[tok][c8]) = v;
    }
    __syncthreads();
    const int nq = cols / 32;
    Chunk<BITS> ca, cb;
    load_chunk<BITS>(p.w, la, kb / 32, ca);
    load_chunk<BITS>(p.w, lb, kb / 32, cb);
    for (int cq = 0; cq < nq; ++cq) {
      uint32_t a[2][4];
      dequant_fragments<BITS>(ca, cb, t, a);
      if (cq + 1 < nq) {  // the next chunk's loads overlap this chunk's MMAs
        load_chunk<BITS>(p.w, la, kb / 32 + cq + 1, ca);
        load_chunk<BITS>(p.w, lb, kb / 32 + cq + 1, cb);
      }
#pragma unroll
      for (int slab = 0; slab < 2; ++slab) {
        const int col = cq * 32 + slab * 16 + 2 * t;
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          const uint32_t b0 = *reinterpret_cast<const uint32_t*>(&xs[8 * n + g][col]);
          const uint32_t b1 = *reinterpret_cast<const uint32_t*>(&xs[8 * n + g][col + 8]);
          mma_16816(acc[n], a[slab], b0, b1);
        }
      }
    }
  }
  pdl_trigger();
  // C fragment: (row g, tokens 2t, 2t+1) and (row g + 8, same tokens).
  float* out = p.partial + int64_t(blockIdx.y) * p.m * N;
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    const int tok = 8 * n + 2 * t;
    if (row_a < N) {
      if (tok < p.m) out[tok * N + row_a] = acc[n][0];
      if (tok + 1 < p.m) out[(tok + 1) * N + row_a] = acc[n][1];
    }
    if (row_b < N) {
      if (tok < p.m) out[tok * N + row_b] = acc[n][2];
      if (tok + 1 < p.m) out[(tok + 1) * N + row_b] = acc[n][3];
    }
  }
}

// x' = x * inv_s * 2^-e (per token row, |x'| <= 1) as f16; rscale = 2^e. One block per row.
__global__ void qbits_mma_prepare(const float* x, int64_t ldx, int64_t K, const float* inv_s, __half* xh,
                                  float* rscale) {
  pdl_wait();
  const int64_t i = blockIdx.x;
  const float* xr = x + i * ldx;
  float amax = 0.0f;
  for (int64_t c = threadIdx.x; c < K; c += blockDim.x) amax = fmaxf(amax, fabsf(xr[c] * (inv_s ? inv_s[c] : 1.0f)));
  amax = block_reduce<256>(amax, true);
  int e = 0;
  if (amax > 0.0f) frexpf(amax, &e);  // amax = f * 2^e, f in [0.5, 1)
  const float down = ldexpf(1.0f, -e);
  for (int64_t c = threadIdx.x; c < K; c += blockDim.x)
    xh[i * K + c] = __float2half_rn(xr[c] * (inv_s ? inv_s[c] : 1.0f) * down);
  if (threadIdx.x == 0) rscale[i] = ldexpf(1.0f, e);
  pdl_trigger();
}

// y = rscale * sum over splits (+ bias) (+ y).
__global__ void qbits_mma_reduce(const float* partial, int splits, int m, int64_t N, const float* rscale,
                                 const float* bias, int accumulate, float* y, int64_t ldy) {
  pdl_wait();
  const int64_t total = int64_t(m) * N;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / N, n = e % N;
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) v += partial[s * total + e];
    v *= rscale[i];
    if (bias) v += bias[n];
    float* yp = y + i * ldy + n;
    if (accumulate) v += *yp;
    *yp = v;
  }
}

template <int BITS>
void launch_mma_bits(const MmaParams& p, int nt, dim3 grid, cudaStream_t s) {
  switch (nt) {
    case 1: launch_pdl(qbits_mma_kernel<BITS, 1>, grid, dim3(32 * kMmaWarps), 0, s, p); break;
    case 2: launch_pdl(qbits_mma_kernel<BITS, 2>, grid, dim3(32 * kMmaWarps), 0, s, p); break;
    case 4: launch_pdl(qbits_mma_kernel<BITS, 4>, grid, dim3(32 * kMmaWarps), 0, s, p); break;
    default: launch_pdl(qbits_mma_kernel<BITS, 8>, grid, dim3(32 * kMmaWarps), 0, s, p); break;
  }
}

struct MmaPlan {
  int splits;
  int64_t k_per_split;
};

MmaPlan plan(int64_t N, int64_t K) {
  const int64_t row_blocks = (N + kMmaRows - 1) / kMmaRows, slices = (K + kMmaKB - 1) / kMmaKB;
  // Enough blocks for ~4 per SM, each keeping at least two slices of K.
  int64_t splits = std::clamp<int64_t>((4 * sm_count() + row_blocks - 1) / row_blocks, 1, kMaxSplits);
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, slices / 2));
  const int64_t per = (slices + splits - 1) / splits;
  return {int((slices + per - 1) / per), per * kMmaKB};
}

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

}  // namespace

size_t qbits_mma_scratch_bytes(const QbitsDeviceWeight& w) {
  const MmaPlan pl = plan(w.rows, w.cols);
  return align256(size_t(kMmaMaxRows * w.cols) * 2) + align256(size_t(kMmaMaxRows) * 4) +
         size_t(pl.splits) * size_t(kMmaMaxRows) * size_t(w.rows) * 4;
}

void mma_qbits(const LinearArgs& a, const QbitsDeviceWeight& w, void* scratch, cudaStream_t s) {
  if (a.m <= 0) return;
  check_weight(w);
  check_a16(w, "mma_qbits");
  if (a.m > kMmaMaxRows) fail("CUDA mma_qbits: m = {} exceeds {}", a.m, kMmaMaxRows);
  if (a.op != InputOp::None || a.silu_pairs) fail("CUDA mma_qbits: takes op None without SiLU pairs");
  if (!a.x || !a.y || a.ldx < w.cols || a.ldy < w.rows) fail("CUDA mma_qbits: bad x / y (ldx {}, ldy {})", a.ldx, a.ldy);
  if (!scratch || (reinterpret_cast<uintptr_t>(scratch) & 255) != 0)
    fail("CUDA mma_qbits: scratch missing or not 256-byte aligned");
  const MmaPlan pl = plan(w.rows, w.cols);
  auto* base = static_cast<char*>(scratch);
  auto* xh = reinterpret_cast<__half*>(base);
  auto* rscale = reinterpret_cast<float*>(base + align256(size_t(kMmaMaxRows * w.cols) * 2));
  auto* partial = reinterpret_cast<float*>(base + align256(size_t(kMmaMaxRows * w.cols) * 2) +
                                           align256(size_t(kMmaMaxRows) * 4));
  launch_pdl(qbits_mma_prepare, dim3(unsigned(a.m)), dim3(256), 0, s, a.x, a.ldx, w.cols, w.inv_input_scale, xh,
             rscale);
  check_launch("qbits_mma_prepare");
  MmaParams p;
  p.w = weight_params(w);
  p.xh = xh, p.m = int(a.m), p.k_per_split = pl.k_per_split, p.partial = partial;
  const dim3 grid(unsigned((w.rows + kMmaRows - 1) / kMmaRows), unsigned(pl.splits));
  const int nt = a.m <= 8 ? 1 : a.m <= 16 ? 2 : a.m <= 32 ? 4 : 8;
  with_bits(w.bits, [&](auto b) { launch_mma_bits<decltype(b)::value>(p, nt, grid, s); });
  check_launch("qbits_mma");
  const unsigned rg = unsigned(std::min<int64_t>((a.m * w.rows + 255) / 256, 4 * sm_count()));
  launch_pdl(qbits_mma_reduce, dim3(rg), dim3(256), 0, s, static_cast<const float*>(partial), pl.splits, int(a.m),
             w.rows, static_cast<const float*>(rscale), a.bias, a.accumulate ? 1 : 0, a.y, a.ldy);
  check_launch("qbits_mma_reduce");
}

}  // namespace anybit::cuda
