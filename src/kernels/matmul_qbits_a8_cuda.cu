// W{2..8}A8 on the integer tensor cores for QBITS weights with act_bits = 8 (W8A8, W6A8,
// W4A8, ...): every m, decode and prefill. The semantics are the scalar reference's
// (kernels/matmul_qbits_scalar.cpp): each token row of x' = op(x) * (1/input_scale) is
// quantized to int8 with one scale amax / 127 (round half to even), then multiplied by
// the dequantized weights.
//
// Design, and why:
// - Two launches (three with split-K). qbits_a8_quantize reads each token row once per
//   pass (RMSNorm's sum of squares, the max, the codes), applying the op (RMSNorm, SiLU·mul)
//   and 1/input_scale on the way, and writes the int8 row, its scale and its sums of codes
//   per weight group. The GEMM then reads x as int8: a quarter of fp32's bytes.
// - mma.sync.m16n8k32 with the weight codes as the unsigned A operand (16 weight rows x 32
//   columns; codes < 256 fit u8 for every width) and the int8 activations as the signed B
//   operand (32 columns x 8 tokens). The products sum exactly in int32 over one weight
//   group; at the group's end value = s * (sum q*code - z * sum q), with the integer part
//   of z applied in int32 (still exact: |sum| < 2^24 at 8 bits and group 128) and only the
//   fraction of an asymmetric zero in fp32. The scale of the token is applied once, at the
//   end. So the result differs from the reference only by fp32 rounding.
// - The A fragment needs, per lane (g, t), four consecutive k slots of rows g and g + 8.
//   The order of the k slots inside one MMA is free as long as A and B agree, so lane t
//   takes 8 whole columns (4 pairs of the pair-order layout, qbits_cuda_pack.h): per plane
//   those pairs sit in one word at one shift, and two byte permutes build the registers.
//   When the group covers 4 chunks (group % 128 == 0), lane t takes its columns from chunk
//   q0 + t, so one 16-byte load per row and plane feeds four MMAs; otherwise all lanes read
//   one chunk (one 4-byte word each) per MMA.
// - x tiles are read straight from global memory (they are small and L1/L2-resident); the
//   next step's weight words are loaded before the current step's MMAs.
// - Split-K over groups when too few blocks would run (decode); partial sums then go to
//   scratch and one reduction applies the token scales, bias, accumulate and SiLU pairs in a
//   fixed order. Without split-K the GEMM's own epilogue does that.
#include <algorithm>

#include "core/error.h"
#include "kernels/qbits_cuda_common.cuh"

namespace anybit::cuda {
namespace {

using namespace detail;
using namespace qdetail;

constexpr int kA8Warps = 4;              // 16 weight rows each
constexpr int kA8Rows = 16 * kA8Warps;   // weight rows per block
constexpr int kA8Threads = 32 * kA8Warps;
constexpr int kA8MaxSplits = 16;
constexpr int kQuantThreads = 256;

struct A8Params {
  QParams w;           // the weight (weight_params); its bias / y fields are unused
  const int8_t* xq;    // [m][K] int8 codes of x'
  const float* xs;     // [m] token scales amax / 127
  const int* gsum;     // [m][G] sums of codes per weight group
  int m;
  int groups_per_split;
  float* partial;      // [splits][m][N] (split-K only)
  const float* bias;
  int accumulate, pair;
  float* y;
  int64_t ldy;
};

__device__ __forceinline__ void mma_s8(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                       uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Words a lane keeps per row and step: LC = 4 holds whole chunks (every plane word), LC = 1
// one word per plane (the one with the lane's pairs, already shifted down).
template <int BITS, int LC>
__host__ __device__ constexpr int step_words() {
  return LC == 4 ? words_per_chunk(BITS) : plane_count(BITS);
}

template <int BITS, int LC>
__device__ __forceinline__ void load_step(const QParams& p, int64_t row, int64_t q0, int t, uint32_t* w) {
  if constexpr (LC == 4) {
    int o = 0;
#pragma unroll
    for (int pl = 0; pl < plane_count(BITS); ++pl) {
      const int W = plane_width(BITS, pl);
      const uint8_t* a = p.plane[pl] + (row * p.nch + q0 + t) * (4 * W);
      if (W == 4) {
        const uint4 r = load_stream(a);
        w[o] = r.x, w[o + 1] = r.y, w[o + 2] = r.z, w[o + 3] = r.w;
      } else if (W == 2) {
        const uint2 r = load_stream8(a);
        w[o] = r.x, w[o + 1] = r.y;
      } else {
        w[o] = load_stream4(a);
      }
      o += W;
    }
  } else {
#pragma unroll
    for (int pl = 0; pl < plane_count(BITS); ++pl) {
      const int W = plane_width(BITS, pl);
      // Pairs 4t..4t+3: word 4t / (16 / W), at bit W * (4t % (16 / W)).
      const uint8_t* a = p.plane[pl] + (row * p.nch + q0) * (4 * W);
      if (W == 4) w[pl] = load_stream4(a + 4 * t);
      else if (W == 2) w[pl] = load_stream4(a + 4 * (t / 2)) >> (8 * (t % 2));
      else w[pl] = load_stream4(a) >> (4 * t);
    }
  }
}

// The lane's pairs P..P+3 with each plane's fields at bits [0, 4W) of both halves (u[pl])
// -> the two A registers: columns 2P..2P+3 and 2P+4..2P+7 as bytes.
template <int BITS>
__device__ __forceinline__ void build_a(const uint32_t (&u)[3], uint32_t& lo, uint32_t& hi) {
  uint32_t m0 = 0, m1 = 0, m2 = 0, m3 = 0;
#pragma unroll
  for (int pl = 0; pl < plane_count(BITS); ++pl) {
    const int W = plane_width(BITS, pl), sh = plane_shift(BITS, pl);
    const uint32_t mask = ((1u << W) - 1u) * 0x00010001u;
    m0 |= (u[pl] & mask) << sh;
    m1 |= ((u[pl] >> W) & mask) << sh;
    m2 |= ((u[pl] >> (2 * W)) & mask) << sh;
    m3 |= ((u[pl] >> (3 * W)) & mask) << sh;
  }
  // bytes (m0.b0, m0.b2, m1.b0, m1.b2): pair P low, pair P high, pair P+1 low, high.
  lo = __byte_perm(m0, m1, 0x6420);
  hi = __byte_perm(m2, m3, 0x6420);
}

// Plane words of k step j (LC = 4: pairs 4j..4j+3 of the lane's own chunk).
template <int BITS, int LC, int J>
__device__ __forceinline__ void step_fields(const uint32_t* w, uint32_t (&u)[3]) {
  if constexpr (LC == 4) {
    int o = 0;
#pragma unroll
    for (int pl = 0; pl < plane_count(BITS); ++pl) {
      const int W = plane_width(BITS, pl);
      if (W == 4) u[pl] = w[o + J];
      else if (W == 2) u[pl] = w[o + J / 2] >> (8 * (J % 2));
      else u[pl] = w[o] >> (4 * J);
      o += W;
    }
  } else {
#pragma unroll
    for (int pl = 0; pl < plane_count(BITS); ++pl) u[pl] = w[pl];
  }
}

template <int BITS, int NT, int LC, int J>
__device__ __forceinline__ void k_step(const A8Params& p, const uint32_t* wa, const uint32_t* wb, int64_t q0, int t,
                                       const int (&tok)[NT], int (&iacc)[NT][4]) {
  uint32_t ua[3] = {0, 0, 0}, ub[3] = {0, 0, 0};
  step_fields<BITS, LC, J>(wa, ua);
  step_fields<BITS, LC, J>(wb, ub);
  uint32_t a0, a1, a2, a3;
  build_a<BITS>(ua, a0, a2);
  build_a<BITS>(ub, a1, a3);
  const int64_t col = LC == 4 ? (q0 + t) * 32 + 8 * J : q0 * 32 + 8 * t;
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    const uint2 b = __ldg(reinterpret_cast<const uint2*>(p.xq + tok[n] * p.w.K + col));
    mma_s8(iacc[n], a0, a1, a2, a3, b.x, b.y);
  }
}

// grid = (row blocks, K splits, token tiles of 8 * NT).
template <int BITS, int NT, int LC>
__global__ void __launch_bounds__(kA8Threads) qbits_a8_kernel(const A8Params p) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t N = p.w.N;
  const int64_t row_a = int64_t(blockIdx.x) * kA8Rows + warp * 16 + g, row_b = row_a + 8;
  const int64_t la = row_a < N ? row_a : N - 1, lb = row_b < N ? row_b : N - 1;
  const int G = p.w.G, cpg = p.w.cpg, steps = cpg / LC;
  const int g0 = int(blockIdx.y) * p.groups_per_split, g1 = min(G, g0 + p.groups_per_split);
  const int tile0 = int(blockIdx.z) * 8 * NT;
  // B rows of this lane (tokens past m read row m - 1: valid memory, never stored).
  int tok[NT];
#pragma unroll
  for (int n = 0; n < NT; ++n) tok[n] = min(tile0 + 8 * n + g, p.m - 1);

  constexpr int SW = step_words<BITS, LC>();
  // This step's words (wa, wb) and the next one's (na, nb); copied over, never indexed at
  // run time (that would put them in local memory).
  uint32_t wa[SW], wb[SW], na[SW], nb[SW];
  // Weights are never written by earlier kernels: the first step is requested before waiting.
  if (g0 < g1) {
    load_step<BITS, LC>(p.w, la, int64_t(g0) * cpg, t, wa);
    load_step<BITS, LC>(p.w, lb, int64_t(g0) * cpg, t, wb);
  }
  pdl_wait();

  float acc[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
  const int total = (g1 - g0) * steps;
  for (int gi = g0; gi < g1; ++gi) {
    int iacc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n) iacc[n][0] = iacc[n][1] = iacc[n][2] = iacc[n][3] = 0;
    for (int st = 0; st < steps; ++st) {
      const int idx = (gi - g0) * steps + st;
      const int64_t q0 = int64_t(gi) * cpg + st * LC;
      if (idx + 1 < total) {  // the next step's loads overlap this step's MMAs
        const int64_t qn = st + 1 < steps ? q0 + LC : int64_t(gi + 1) * cpg;
        load_step<BITS, LC>(p.w, la, qn, t, na);
        load_step<BITS, LC>(p.w, lb, qn, t, nb);
      }
      k_step<BITS, NT, LC, 0>(p, wa, wb, q0, t, tok, iacc);
      if constexpr (LC == 4) {
        k_step<BITS, NT, LC, 1>(p, wa, wb, q0, t, tok, iacc);
        k_step<BITS, NT, LC, 2>(p, wa, wb, q0, t, tok, iacc);
        k_step<BITS, NT, LC, 3>(p, wa, wb, q0, t, tok, iacc);
      }
#pragma unroll
      for (int i = 0; i < SW; ++i) wa[i] = na[i], wb[i] = nb[i];
    }
    // value = s * (sum q*code - z * sum q): round(z) in int32, frac(z) in fp32.
    const float sa = group_meta(p.w.scales, p.w.scales_f16, la * G + gi);
    const float sb = group_meta(p.w.scales, p.w.scales_f16, lb * G + gi);
    const float za = p.w.asym ? group_meta(p.w.zeros, p.w.zeros_f16, la * G + gi) : p.w.zero_sym;
    const float zb = p.w.asym ? group_meta(p.w.zeros, p.w.zeros_f16, lb * G + gi) : p.w.zero_sym;
    const float zra = rintf(za), zrb = rintf(zb);
    const int zia = int(zra), zib = int(zrb);
    const float zfa = za - zra, zfb = zb - zrb;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const int t0 = min(tile0 + 8 * n + 2 * t, p.m - 1), t1 = min(tile0 + 8 * n + 2 * t + 1, p.m - 1);
      const int s0 = __ldg(p.gsum + int64_t(t0) * G + gi), s1 = __ldg(p.gsum + int64_t(t1) * G + gi);
      acc[n][0] = fmaf(sa, float(iacc[n][0] - zia * s0) - zfa * float(s0), acc[n][0]);
      acc[n][1] = fmaf(sa, float(iacc[n][1] - zia * s1) - zfa * float(s1), acc[n][1]);
      acc[n][2] = fmaf(sb, float(iacc[n][2] - zib * s0) - zfb * float(s0), acc[n][2]);
      acc[n][3] = fmaf(sb, float(iacc[n][3] - zib * s1) - zfb * float(s1), acc[n][3]);
    }
  }
  pdl_trigger();

  // C fragment: (row g, tokens 2t, 2t+1) and (row g + 8, same tokens).
  if (p.partial) {
    float* out = p.partial + int64_t(blockIdx.y) * p.m * N;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const int tk = tile0 + 8 * n + 2 * t;
      if (row_a < N) {
        if (tk < p.m) out[tk * N + row_a] = acc[n][0];
        if (tk + 1 < p.m) out[(tk + 1) * N + row_a] = acc[n][1];
      }
      if (row_b < N) {
        if (tk < p.m) out[tk * N + row_b] = acc[n][2];
        if (tk + 1 < p.m) out[(tk + 1) * N + row_b] = acc[n][3];
      }
    }
    return;
  }
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    const int tk = tile0 + 8 * n + 2 * t;
    const float x0 = tk < p.m ? p.xs[tk] : 0.0f, x1 = tk + 1 < p.m ? p.xs[tk + 1] : 0.0f;
    float v[4] = {acc[n][0] * x0, acc[n][1] * x1, acc[n][2] * x0, acc[n][3] * x1};
    if (p.bias) {
      const float ba = p.bias[la], bb = p.bias[lb];
      v[0] += ba, v[1] += ba, v[2] += bb, v[3] += bb;
    }
    if (p.pair) {
      // Rows 2j (gate) and 2j + 1 (up) sit in lanes g and g + 1 (4 lanes apart): even g
      // takes the up values of its neighbour and writes silu(gate) * up.
      float u[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) u[e] = __shfl_down_sync(0xffffffffu, v[e], 4);
      if (g % 2 == 0) {
        const int64_t ja = row_a / 2, jb = row_b / 2;
        if (row_a + 1 < N) {
          if (tk < p.m) p.y[tk * p.ldy + ja] = silu(v[0]) * u[0];
          if (tk + 1 < p.m) p.y[(tk + 1) * p.ldy + ja] = silu(v[1]) * u[1];
        }
        if (row_b + 1 < N) {
          if (tk < p.m) p.y[tk * p.ldy + jb] = silu(v[2]) * u[2];
          if (tk + 1 < p.m) p.y[(tk + 1) * p.ldy + jb] = silu(v[3]) * u[3];
        }
      }
      continue;
    }
    auto put = [&](int64_t tkn, int64_t row, float val) {
      if (tkn >= p.m || row >= N) return;
      float* yp = p.y + tkn * p.ldy + row;
      *yp = p.accumulate ? *yp + val : val;
    };
    put(tk, row_a, v[0]), put(tk + 1, row_a, v[1]), put(tk, row_b, v[2]), put(tk + 1, row_b, v[3]);
  }
}

// One block per token row: x' = op(x) * (1/input_scale), its int8 codes (round half to
// even, clamped to +-127), scale amax / 127 and per-group sums of the codes.
template <InputOp OP>
__global__ void __launch_bounds__(kQuantThreads) qbits_a8_quantize(const float* x, int64_t ldx, int64_t K,
                                                                   const float* norm_w, float eps, const float* inv_s,
                                                                   int group, int8_t* xq, float* xs, int* gsum) {
  extern __shared__ int s_csum[];  // [K / 32] sums per 32-column chunk
  pdl_wait();
  const int64_t i = blockIdx.x;
  const float* xr = x + i * ldx;
  float r = 1.0f;
  if constexpr (OP == InputOp::RmsNorm) {
    float ss = 0.0f;
    for (int64_t c = threadIdx.x; c < K; c += kQuantThreads) ss = fmaf(xr[c], xr[c], ss);
    r = 1.0f / sqrtf(block_reduce<kQuantThreads>(ss, false) / float(K) + eps);
  }
  auto value = [&](int64_t c) {
    float v = xr[c];
    if constexpr (OP == InputOp::RmsNorm) v = v * r * norm_w[c];
    if constexpr (OP == InputOp::SiluMul) v = silu(v) * xr[K + c];
    if (inv_s) v *= inv_s[c];
    return v;
  };
  float amax = 0.0f;
  for (int64_t c = threadIdx.x; c < K; c += kQuantThreads) amax = fmaxf(amax, fabsf(value(c)));
  amax = block_reduce<kQuantThreads>(amax, true);
  const float qinv = amax > 0.0f ? 127.0f / amax : 0.0f;
  // Four consecutive columns per thread: the 8 threads of a 32-column chunk are 8 lanes
  // of one warp (K % 32 == 0), so a chunk's sum takes three shuffles.
  for (int64_t c0 = 0; c0 < K; c0 += 4 * kQuantThreads) {
    const int64_t c = c0 + 4 * threadIdx.x;
    int sum = 0;
    if (c < K) {
      uint32_t packed = 0;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int q = int(fminf(fmaxf(rintf(value(c + e) * qinv), -127.0f), 127.0f));
        sum += q;
        packed |= (uint32_t(q) & 0xffu) << (8 * e);
      }
      *reinterpret_cast<uint32_t*>(xq + i * K + c) = packed;
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    sum += __shfl_xor_sync(0xffffffffu, sum, 4);
    if (c < K && threadIdx.x % 8 == 0) s_csum[c / 32] = sum;
  }
  __syncthreads();
  const int64_t G = K / group, cpg = group / 32;
  for (int64_t gi = threadIdx.x; gi < G; gi += kQuantThreads) {
    int s = 0;
    for (int64_t j = 0; j < cpg; ++j) s += s_csum[gi * cpg + j];
    gsum[i * G + gi] = s;
  }
  if (threadIdx.x == 0) xs[i] = amax / 127.0f;
  pdl_trigger();
}

// y = xs * sum over splits (+ bias) (+ y), or with SiLU pairs silu(gate) * up.
__global__ void qbits_a8_reduce(const float* partial, int splits, int m, int64_t N, const float* xs, const float* bias,
                                int accumulate, int pair, float* y, int64_t ldy) {
  pdl_wait();
  const int64_t outs = pair ? N / 2 : N, total = int64_t(m) * outs, stride = int64_t(m) * N;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / outs, n = e % outs;
    if (pair) {
      float gt = 0.0f, up = 0.0f;
      for (int s = 0; s < splits; ++s) gt += partial[s * stride + i * N + 2 * n], up += partial[s * stride + i * N + 2 * n + 1];
      gt *= xs[i], up *= xs[i];
      if (bias) gt += bias[2 * n], up += bias[2 * n + 1];
      y[i * ldy + n] = silu(gt) * up;
      continue;
    }
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) v += partial[s * stride + i * N + n];
    v *= xs[i];
    if (bias) v += bias[n];
    float* yp = y + i * ldy + n;
    if (accumulate) v += *yp;
    *yp = v;
  }
}

template <int BITS, int LC>
void launch_a8_lc(const A8Params& p, int nt, dim3 grid, cudaStream_t s) {
  switch (nt) {
    case 1: launch_pdl(qbits_a8_kernel<BITS, 1, LC>, grid, dim3(kA8Threads), 0, s, p); break;
    case 2: launch_pdl(qbits_a8_kernel<BITS, 2, LC>, grid, dim3(kA8Threads), 0, s, p); break;
    case 4: launch_pdl(qbits_a8_kernel<BITS, 4, LC>, grid, dim3(kA8Threads), 0, s, p); break;
    default: launch_pdl(qbits_a8_kernel<BITS, 8, LC>, grid, dim3(kA8Threads), 0, s, p); break;
  }
}

template <int BITS>
void launch_a8_bits(const A8Params& p, int nt, bool lc4, dim3 grid, cudaStream_t s) {
  if (lc4) launch_a8_lc<BITS, 4>(p, nt, grid, s);
  else launch_a8_lc<BITS, 1>(p, nt, grid, s);
}

template <InputOp OP>
void launch_quantize(const LinearArgs& a, int64_t m, const QbitsDeviceWeight& w, int8_t* xq, float* xs, int* gsum,
                     cudaStream_t s) {
  const size_t shm = size_t(w.cols / 32) * sizeof(int);
  launch_pdl(qbits_a8_quantize<OP>, dim3(unsigned(m)), dim3(kQuantThreads), shm, s, a.x, a.ldx, w.cols, a.norm_w, a.eps,
             w.inv_input_scale, w.group, xq, xs, gsum);
}

int64_t splits_for(const QbitsDeviceWeight& w, int64_t m) {
  if (m > kMmaMaxRows) return 1;
  const int64_t G = w.cols / w.group;
  const int64_t blocks = (w.rows + kA8Rows - 1) / kA8Rows * ((m + 63) / 64);
  int64_t splits = std::clamp<int64_t>((4 * sm_count() + blocks - 1) / blocks, 1, kA8MaxSplits);
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, G / 2));  // at least two groups per split
  const int64_t per = (G + splits - 1) / splits;
  return (G + per - 1) / per;
}

size_t align256(size_t n) { return (n + 255) / 256 * 256; }
// Bytes of scratch per token row of one pass: int8 row, scale, group sums.
size_t row_bytes(const QbitsDeviceWeight& w) { return size_t(w.cols) + 4 + size_t(w.cols / w.group) * 4; }

}  // namespace

size_t qbits_a8_scratch_bytes(const QbitsDeviceWeight& w) {
  return align256(size_t(kMmaMaxRows) * row_bytes(w)) + 3 * 256 +
         size_t(kA8MaxSplits) * size_t(kMmaMaxRows) * size_t(w.rows) * 4;
}

void a8_qbits(const LinearArgs& a, const QbitsDeviceWeight& w, void* scratch, cudaStream_t s) {
  if (a.m <= 0) return;
  check_weight(w);
  if (w.act_bits != 8) fail("CUDA a8_qbits: the weight has act_bits {} (this path runs act_bits 8)", w.act_bits);
  if (!a.x || !a.y) fail("CUDA a8_qbits: x or y is null");
  if (a.ldx < (a.op == InputOp::SiluMul ? 2 * w.cols : w.cols))
    fail("CUDA a8_qbits: ldx = {} is shorter than an input row (K = {}, op {})", a.ldx, w.cols, int(a.op));
  if (a.op == InputOp::RmsNorm && !a.norm_w) fail("CUDA a8_qbits: RMSNorm needs a norm weight");
  if (a.silu_pairs && (w.rows % 2 != 0 || a.accumulate))
    fail("CUDA a8_qbits: SiLU pairs need an even row count and no accumulate (N = {})", w.rows);
  if (a.ldy < (a.silu_pairs ? w.rows / 2 : w.rows)) fail("CUDA a8_qbits: ldy = {} is too small", a.ldy);
  if (!scratch || (reinterpret_cast<uintptr_t>(scratch) & 255) != 0)
    fail("CUDA a8_qbits: scratch missing or not 256-byte aligned");
  const size_t have = qbits_scratch_bytes(w);
  // Token rows per pass: all of them when they fit beside nothing else (prefill, no
  // split-K); the weights are re-read once per pass.
  const int64_t per_pass = std::max<int64_t>(kMmaMaxRows, int64_t((have - 3 * 256) / (row_bytes(w) + 1)));
  const bool lc4 = (w.group / 32) % 4 == 0;
  for (int64_t i0 = 0; i0 < a.m; i0 += per_pass) {
    const int64_t m = std::min(per_pass, a.m - i0);
    const int64_t splits = splits_for(w, m);
    auto* base = static_cast<char*>(scratch);
    auto* xq = reinterpret_cast<int8_t*>(base);
    size_t off = align256(size_t(m) * size_t(w.cols));
    auto* xs = reinterpret_cast<float*>(base + off);
    off += align256(size_t(m) * 4);
    auto* gsum = reinterpret_cast<int*>(base + off);
    off += align256(size_t(m) * size_t(w.cols / w.group) * 4);
    float* partial = splits > 1 ? reinterpret_cast<float*>(base + off) : nullptr;
    if (off + (splits > 1 ? size_t(splits * m * w.rows) * 4 : 0) > have)
      fail("CUDA a8_qbits: scratch too small for {} rows", m);

    LinearArgs b = a;
    b.x = a.x + i0 * a.ldx;
    switch (a.op) {
      case InputOp::None: launch_quantize<InputOp::None>(b, m, w, xq, xs, gsum, s); break;
      case InputOp::RmsNorm: launch_quantize<InputOp::RmsNorm>(b, m, w, xq, xs, gsum, s); break;
      case InputOp::SiluMul: launch_quantize<InputOp::SiluMul>(b, m, w, xq, xs, gsum, s); break;
    }
    check_launch("qbits_a8_quantize");

    A8Params p;
    p.w = weight_params(w);
    p.xq = xq, p.xs = xs, p.gsum = gsum, p.m = int(m);
    const int G = int(w.cols / w.group);
    p.groups_per_split = int((G + splits - 1) / splits);
    p.partial = partial;
    p.bias = a.bias, p.accumulate = a.accumulate ? 1 : 0, p.pair = a.silu_pairs ? 1 : 0;
    p.y = a.y + i0 * a.ldy, p.ldy = a.ldy;
    const int nt = m <= 8 ? 1 : m <= 16 ? 2 : m <= 32 ? 4 : 8;
    const dim3 grid(unsigned((w.rows + kA8Rows - 1) / kA8Rows), unsigned(splits), unsigned((m + 8 * nt - 1) / (8 * nt)));
    with_bits(w.bits, [&](auto b) { launch_a8_bits<decltype(b)::value>(p, nt, lc4, grid, s); });
    check_launch("qbits_a8");
    if (splits > 1) {
      const int64_t outs = m * (a.silu_pairs ? w.rows / 2 : w.rows);
      const unsigned rg = unsigned(std::min<int64_t>((outs + 255) / 256, 4 * sm_count()));
      launch_pdl(qbits_a8_reduce, dim3(rg), dim3(256), 0, s, static_cast<const float*>(partial), int(splits), int(m),
                 w.rows, static_cast<const float*>(xs), a.bias, a.accumulate ? 1 : 0, a.silu_pairs ? 1 : 0,
                 a.y + i0 * a.ldy, a.ldy);
      check_launch("qbits_a8_reduce");
    }
  }
}

}  // namespace anybit::cuda
