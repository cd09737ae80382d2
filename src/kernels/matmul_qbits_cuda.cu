// W{2..8}A16 GEMV on the QBITS any-bit format (layout: kernels/qbits_cuda_pack.h), decode
// path (m <= 4 per launch), fp32 activations and accumulation.
//
// Design, and why:
// - At 4 bits a weight element is half a byte but needs 4 bytes of fp32 x per input row,
//   so reading x (not W) would limit the kernel if every warp owned one output row. A
//   warp owns kR = 4 rows instead and reuses each x value it loads for all four, which
//   keeps shared-memory traffic per weight byte low enough for m = 1 (m = 4 is near the
//   shared-memory limit and, at ~6 instructions per element, near the issue limit too).
// - Lane l of a warp owns 32-column chunks q = q0 + l, q0 + l + 32, ...: per row and
//   plane one 16/8/4-byte load, consecutive lanes reading consecutive addresses. A
//   chunk lies inside one quantization group, so a lane needs one scale and one zero per
//   row and chunk. The next chunk's loads are issued before the current one is consumed
//   (register double buffer), and the first ones before waiting on the previous kernel
//   (programmatic dependent launch), so DRAM latency overlaps the prologue.
// - Fields become floats with no conversion instruction: (word & mask) | exponent gives
//   2^E + field exactly, one FADD removes 2^E (see the header). Planes are recombined
//   with exact FFMAs (the codes are small integers). The zero point is applied per chunk:
//   sum x (q - z) = sum x q - z * sum x, with sum x shared by the kR rows.
// - When N is small the K range is split over ks = 1..8 warps of a block (partial sums
//   combined in shared memory), so a launch has enough warps to fill the chip.
// - op(x) (RMSNorm / SiLU·mul, then * 1/input_scale) is computed once per block into
//   shared memory, padded by 4 floats per 32 so that lanes reading consecutive chunks hit
//   different banks; when it does not fit in 48 KiB it is applied while reading x from
//   global memory (L1-cached, four rows per load).
#include <algorithm>

#include "core/error.h"
#include "kernels/cuda_common.cuh"
#include "kernels/qbits_cuda_pack.h"

namespace anybit::cuda {
namespace {

using namespace detail;

constexpr int kQThreads = 256;
constexpr int kQWarps = kQThreads / 32;
constexpr int kR = 4;  // output rows per warp
constexpr int kMaxStageBytes = 48 * 1024;

// The plane split of qbits_plane_split() at compile time (checked against it at upload).
__host__ __device__ constexpr int plane_count(int bits) { return bits == 2 || bits == 4 ? 1 : bits == 7 ? 3 : 2; }
__host__ __device__ constexpr int plane_width(int bits, int p) {
  return p == 0 ? (bits < 4 ? 2 : 4) : p == 1 ? (bits == 3 || bits == 5 ? 1 : bits == 8 ? 4 : 2) : 1;
}
__host__ __device__ constexpr int plane_shift(int bits, int p) {
  return p == 0 ? 0 : p == 1 ? plane_width(bits, 0) : plane_width(bits, 0) + plane_width(bits, 1);
}
__host__ __device__ constexpr int words_per_chunk(int bits) {
  int n = 0;
  for (int p = 0; p < plane_count(bits); ++p) n += plane_width(bits, p);
  return n;
}

struct QParams {
  const float* x;
  int64_t ldx;
  int m;
  int64_t K, N;
  int64_t nch;  // chunks per row (K / 32)
  const uint8_t* plane[3];
  const void* scales;
  const void* zeros;
  int scales_f16, zeros_f16, asym;
  float zero_sym;
  int G, cpg;  // groups per row, chunks per group
  const float* inv_s;
  const float* norm_w;
  float eps;
  const float* bias;
  int accumulate, pair;
  float* y;
  int64_t ldy;
  int ks;     // warps per row group (split-K)
  int stage;  // op(x) staged in shared memory
  int64_t xs_ld;  // floats per staged row (K / 32 * 36)
};

__device__ __forceinline__ uint2 load_stream8(const void* p) {
  uint2 r;
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
  return r;
}
__device__ __forceinline__ uint32_t load_stream4(const void* p) {
  uint32_t r;
  asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(r) : "l"(p));
  return r;
}

// One row's chunk: all planes' words, plus its scale and zero point.
template <int BITS>
struct Chunk {
  uint32_t w[words_per_chunk(BITS)];
  float s, z;
};

template <int BITS>
__device__ __forceinline__ void load_chunk(const QParams& p, int64_t row, int64_t q, Chunk<BITS>& c) {
  int o = 0;
#pragma unroll
  for (int pl = 0; pl < plane_count(BITS); ++pl) {
    const int W = plane_width(BITS, pl);
    const uint8_t* a = p.plane[pl] + (row * p.nch + q) * (4 * W);
    if (W == 4) {
      const uint4 r = load_stream(a);
      c.w[o] = r.x, c.w[o + 1] = r.y, c.w[o + 2] = r.z, c.w[o + 3] = r.w;
    } else if (W == 2) {
      const uint2 r = load_stream8(a);
      c.w[o] = r.x, c.w[o + 1] = r.y;
    } else {
      c.w[o] = load_stream4(a);
    }
    o += W;
  }
  const int64_t gi = row * p.G + q / p.cpg;
  c.s = p.scales_f16 ? f16_bits(__ldg(static_cast<const unsigned short*>(p.scales) + gi))
                     : __ldg(static_cast<const float*>(p.scales) + gi);
  if (p.asym)
    c.z = p.zeros_f16 ? f16_bits(__ldg(static_cast<const unsigned short*>(p.zeros) + gi))
                      : __ldg(static_cast<const float*>(p.zeros) + gi);
  else
    c.z = p.zero_sym;
}

// Field e (0..7) of the 8-element piece j (0..3) of a W-bit plane's chunk, as an exact
// float. The field sits at bit `pos` <= 14 of `base`; OR-ing it under the exponent of
// 2^(23 - pos) puts it on the mantissa's units place.
template <int W>
__device__ __forceinline__ float field(const uint32_t* words, int j, int e) {
  uint32_t base;
  int pos;
  if (W == 4) {
    base = e < 4 ? words[j] : words[j] >> 16;
    pos = 4 * (e & 3);
  } else if (W == 2) {
    base = (j & 1) ? words[j >> 1] >> 16 : words[j >> 1];
    pos = 2 * e;
  } else {
    base = words[0] >> (8 * j);
    pos = e;
  }
  const uint32_t magic = uint32_t(127 + 23 - pos) << 23;
  return __uint_as_float((base & (((1u << W) - 1u) << pos)) | magic) - __uint_as_float(magic);
}

template <int BITS>
__device__ __forceinline__ float code_at(const uint32_t* w, int j, int e) {
  constexpr int W0 = plane_width(BITS, 0);
  float q = field<W0>(w, j, e);
  if constexpr (plane_count(BITS) > 1) {
    constexpr int W1 = plane_width(BITS, 1);
    q = fmaf(field<W1>(w + W0, j, e), float(1 << plane_shift(BITS, 1)), q);
  }
  if constexpr (plane_count(BITS) > 2) {
    constexpr int W1 = plane_width(BITS, 1), W2 = plane_width(BITS, 2);
    q = fmaf(field<W2>(w + W0 + W1, j, e), float(1 << plane_shift(BITS, 2)), q);
  }
  return q;
}

// op(x)[i][c .. c+8) * inv_s from global memory (the path when x is not staged).
template <InputOp OP>
__device__ __forceinline__ void load_x8(const QParams& p, int i, int64_t c, float inv, float* xv) {
  const float* xr = p.x + i * p.ldx + c;
#pragma unroll
  for (int v = 0; v < 8; v += 4) {
    const float4 a = *reinterpret_cast<const float4*>(xr + v);
    float t[4] = {a.x, a.y, a.z, a.w};
    if constexpr (OP == InputOp::RmsNorm) {
      const float4 g = *reinterpret_cast<const float4*>(p.norm_w + c + v);
      t[0] = t[0] * inv * g.x, t[1] = t[1] * inv * g.y, t[2] = t[2] * inv * g.z, t[3] = t[3] * inv * g.w;
    } else if constexpr (OP == InputOp::SiluMul) {
      const float4 u = *reinterpret_cast<const float4*>(xr + p.K + v);
      t[0] = silu(t[0]) * u.x, t[1] = silu(t[1]) * u.y, t[2] = silu(t[2]) * u.z, t[3] = silu(t[3]) * u.w;
    }
    if (p.inv_s) {
      const float4 s = *reinterpret_cast<const float4*>(p.inv_s + c + v);
      t[0] *= s.x, t[1] *= s.y, t[2] *= s.z, t[3] *= s.w;
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) xv[v + k] = t[k];
  }
}

template <int BITS, int M, InputOp OP>
__global__ void __launch_bounds__(kQThreads) qbits_gemv_kernel(const QParams p) {
  extern __shared__ float4 s_x4[];
  float* xs = reinterpret_cast<float*>(s_x4);
  __shared__ float s_red[kQWarps][kR][M];
  __shared__ float s_part[kQWarps][M];
  __shared__ float s_inv[M];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t rg = int64_t(blockIdx.x) * (kQWarps / p.ks) + warp / p.ks;  // row group
  const int ksi = warp % p.ks;
  const int64_t n0 = rg * kR;
  const int64_t q_begin = ksi * p.nch / p.ks, q_end = (ksi + 1) * p.nch / p.ks;
  int64_t rows[kR];
#pragma unroll
  for (int r = 0; r < kR; ++r) rows[r] = n0 + r < p.N ? n0 + r : p.N - 1;  // clamped: loads stay in bounds
  const bool active = n0 < p.N;

  // Weights are never written by earlier kernels: fetch the first chunks before waiting.
  Chunk<BITS> cur[kR];
  int64_t q = q_begin + lane;
  if (active && q < q_end)
#pragma unroll
    for (int r = 0; r < kR; ++r) load_chunk<BITS>(p, rows[r], q, cur[r]);

  pdl_wait();
  pdl_trigger();
  float inv[M];
#pragma unroll
  for (int i = 0; i < M; ++i) inv[i] = 1.0f;
  if constexpr (OP == InputOp::RmsNorm) {
    float ss[M];
#pragma unroll
    for (int i = 0; i < M; ++i) {
      ss[i] = 0.0f;
      if (i < p.m)
        for (int64_t c = threadIdx.x; c < p.K; c += kQThreads) {
          const float v = p.x[i * p.ldx + c];
          ss[i] += v * v;
        }
    }
    block_rms_inv<M, kQWarps>(ss, s_part, s_inv, p.K, p.eps, inv);
  }
  if (p.stage) {
#pragma unroll
    for (int i = 0; i < M; ++i)
      for (int64_t c = threadIdx.x; c < p.K; c += kQThreads) {
        float v = 0.0f;  // rows past m stay zero, so their (unused) sums stay finite
        if (i < p.m) {
          const float* xr = p.x + i * p.ldx;
          v = xr[c];
          if constexpr (OP == InputOp::RmsNorm) v = v * inv[i] * p.norm_w[c];  // the CPU's order
          if constexpr (OP == InputOp::SiluMul) v = silu(v) * xr[p.K + c];
          if (p.inv_s) v *= p.inv_s[c];
        }
        xs[i * p.xs_ld + c + (c >> 5) * 4] = v;
      }
    __syncthreads();
  }

  float acc[kR][M];
#pragma unroll
  for (int r = 0; r < kR; ++r)
#pragma unroll
    for (int i = 0; i < M; ++i) acc[r][i] = 0.0f;

  if (active) {
    for (; q < q_end; q += 32) {
      Chunk<BITS> nxt[kR];
      const int64_t qn = q + 32;
      if (qn < q_end)
#pragma unroll
        for (int r = 0; r < kR; ++r) load_chunk<BITS>(p, rows[r], qn, nxt[r]);

      float dot[kR][M], sx[M];
#pragma unroll
      for (int i = 0; i < M; ++i) {
        sx[i] = 0.0f;
#pragma unroll
        for (int r = 0; r < kR; ++r) dot[r][i] = 0.0f;
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float xv[M][8];
#pragma unroll
        for (int i = 0; i < M; ++i) {
          if (p.stage) {
            const float* xp = xs + i * p.xs_ld + q * 36 + j * 8;
            const float4 a = *reinterpret_cast<const float4*>(xp);
            const float4 b = *reinterpret_cast<const float4*>(xp + 4);
            xv[i][0] = a.x, xv[i][1] = a.y, xv[i][2] = a.z, xv[i][3] = a.w;
            xv[i][4] = b.x, xv[i][5] = b.y, xv[i][6] = b.z, xv[i][7] = b.w;
          } else if (i < p.m) {
            load_x8<OP>(p, i, q * 32 + j * 8, inv[i], xv[i]);
          } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) xv[i][e] = 0.0f;
          }
#pragma unroll
          for (int e = 0; e < 8; ++e) sx[i] += xv[i][e];
        }
#pragma unroll
        for (int r = 0; r < kR; ++r)
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            const float c = code_at<BITS>(cur[r].w, j, e);
#pragma unroll
            for (int i = 0; i < M; ++i) dot[r][i] = fmaf(xv[i][e], c, dot[r][i]);
          }
      }
#pragma unroll
      for (int r = 0; r < kR; ++r)
#pragma unroll
        for (int i = 0; i < M; ++i) acc[r][i] = fmaf(cur[r].s, fmaf(-cur[r].z, sx[i], dot[r][i]), acc[r][i]);
#pragma unroll
      for (int r = 0; r < kR; ++r) cur[r] = nxt[r];
    }
  }

#pragma unroll
  for (int r = 0; r < kR; ++r)
#pragma unroll
    for (int i = 0; i < M; ++i) acc[r][i] = warp_sum(acc[r][i]);
  if (p.ks > 1) {  // combine the K slices of each row group (uniform branch: ks is a parameter)
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < kR; ++r)
#pragma unroll
        for (int i = 0; i < M; ++i) s_red[warp][r][i] = acc[r][i];
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kR; ++r)
#pragma unroll
      for (int i = 0; i < M; ++i) {
        float t = 0.0f;
        for (int w = warp - ksi; w < warp - ksi + p.ks; ++w) t += s_red[w][r][i];
        acc[r][i] = t;
      }
  }
  if (!active || ksi != 0) return;
  // Every lane holds every total after the butterfly sums; lane r*M + i writes (r, i).
  if (!p.pair) {
    if (lane < kR * M) {
      const int r = lane / M, i = lane % M;
      float v = 0.0f;
#pragma unroll
      for (int rr = 0; rr < kR; ++rr)
#pragma unroll
        for (int ii = 0; ii < M; ++ii)
          if (rr == r && ii == i) v = acc[rr][ii];
      const int64_t n = n0 + r;
      if (n < p.N && i < p.m) {
        if (p.bias) v += p.bias[n];
        float* yp = p.y + i * p.ldy + n;
        if (p.accumulate) v += *yp;
        *yp = v;
      }
    }
  } else if (lane < (kR / 2) * M) {
    // Rows 2j, 2j+1 are gate_j, up_j; kR is even and n0 a multiple of kR, so pairs never split.
    const int jj = lane / M, i = lane % M;
    float g = 0.0f, u = 0.0f;
#pragma unroll
    for (int rr = 0; rr < kR / 2; ++rr)
#pragma unroll
      for (int ii = 0; ii < M; ++ii)
        if (rr == jj && ii == i) g = acc[2 * rr][ii], u = acc[2 * rr + 1][ii];
    const int64_t n = n0 + 2 * jj;
    if (n + 1 < p.N && i < p.m) {
      if (p.bias) g += p.bias[n], u += p.bias[n + 1];
      p.y[i * p.ldy + n / 2] = silu(g) * u;
    }
  }
}

template <int BITS, int M>
void launch_m(const QParams& p, InputOp op, unsigned grid, cudaStream_t s) {
  const size_t shm = p.stage ? size_t(M) * size_t(p.xs_ld) * sizeof(float) : 0;
  switch (op) {
    case InputOp::None: launch_pdl(qbits_gemv_kernel<BITS, M, InputOp::None>, grid, kQThreads, shm, s, p); break;
    case InputOp::RmsNorm: launch_pdl(qbits_gemv_kernel<BITS, M, InputOp::RmsNorm>, grid, kQThreads, shm, s, p); break;
    case InputOp::SiluMul: launch_pdl(qbits_gemv_kernel<BITS, M, InputOp::SiluMul>, grid, kQThreads, shm, s, p); break;
  }
}

template <int BITS>
void launch_bits(const QParams& p, InputOp op, unsigned grid, cudaStream_t s) {
  if (p.m <= 1) launch_m<BITS, 1>(p, op, grid, s);
  else if (p.m <= 2) launch_m<BITS, 2>(p, op, grid, s);
  else launch_m<BITS, 4>(p, op, grid, s);
}

int qbits_sm_count() {
  static const int n = [] {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      return 132;
    return v;
  }();
  return n;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

void check_weight(const QbitsDeviceWeight& w) {
  if (w.bits < 2 || w.bits > 8) fail("CUDA gemv_qbits: bit width {} is not supported (2..8)", w.bits);
  if (w.rows <= 0 || w.cols <= 0 || w.cols % 32 != 0 || w.group <= 0 || w.group % 32 != 0 || w.cols % w.group != 0)
    fail("CUDA gemv_qbits: bad weight shape {} x {} (group {})", w.rows, w.cols, w.group);
  for (int pl = 0; pl < plane_count(w.bits); ++pl)
    if (!w.planes[pl] || !aligned16(w.planes[pl])) fail("CUDA gemv_qbits: plane {} missing or not 16-byte aligned", pl);
  if (!w.scales || (w.asymmetric && !w.zeros)) fail("CUDA gemv_qbits: scales or zeros missing");
}

// One launch for m <= kGemvMaxRows rows of x.
void gemv_qbits_block(const LinearArgs& a, const QbitsDeviceWeight& w, cudaStream_t s) {
  QParams p{};
  p.x = a.x, p.ldx = a.ldx, p.m = int(a.m);
  p.K = w.cols, p.N = w.rows, p.nch = w.cols / 32;
  for (int pl = 0; pl < 3; ++pl) p.plane[pl] = w.planes[pl];
  p.scales = w.scales, p.zeros = w.zeros;
  p.scales_f16 = w.scales_f16 ? 1 : 0, p.zeros_f16 = w.zeros_f16 ? 1 : 0, p.asym = w.asymmetric ? 1 : 0;
  p.zero_sym = float(1 << (w.bits - 1));
  p.G = int(w.cols / w.group), p.cpg = w.group / 32;
  p.inv_s = w.inv_input_scale;
  p.norm_w = a.norm_w, p.eps = a.eps, p.bias = a.bias;
  p.accumulate = a.accumulate ? 1 : 0, p.pair = a.silu_pairs ? 1 : 0;
  p.y = a.y, p.ldy = a.ldy;
  p.xs_ld = p.nch * 36;
  const int64_t rounded_m = a.m <= 1 ? 1 : a.m <= 2 ? 2 : 4;
  p.stage = rounded_m * p.xs_ld * int64_t(sizeof(float)) <= kMaxStageBytes ? 1 : 0;
  // Split K until the launch has a few blocks per SM, while every lane keeps >= 1 chunk.
  const int64_t groups = (w.rows + kR - 1) / kR;
  p.ks = 1;
  auto blocks = [&](int ks) { return (groups + kQWarps / ks - 1) / (kQWarps / ks); };
  while (p.ks < kQWarps && blocks(p.ks) < 4 * qbits_sm_count() && p.nch / (2 * p.ks) >= 32) p.ks *= 2;
  const unsigned grid = unsigned(blocks(p.ks));
  switch (w.bits) {
    case 2: launch_bits<2>(p, a.op, grid, s); break;
    case 3: launch_bits<3>(p, a.op, grid, s); break;
    case 4: launch_bits<4>(p, a.op, grid, s); break;
    case 5: launch_bits<5>(p, a.op, grid, s); break;
    case 6: launch_bits<6>(p, a.op, grid, s); break;
    case 7: launch_bits<7>(p, a.op, grid, s); break;
    default: launch_bits<8>(p, a.op, grid, s); break;
  }
  check_launch("gemv_qbits");
}

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

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
  size_t off[6] = {}, total = 0;
  for (int q = 0; q < np; ++q) off[q] = total, total += align256(p.planes[q].size());
  off[3] = total, total += align256(sbytes);
  off[4] = total, total += align256(zbytes);
  off[5] = total, total += align256(p.inv_input_scale.size() * 4);

  QbitsDeviceAlloc a;
  ANYBIT_CUDA_CHECK(cudaMalloc(&a.buffer, total));
  a.bytes = total;
  auto* base = static_cast<char*>(a.buffer);
  auto put = [&](size_t o, const void* src, size_t n) {
    if (n) ANYBIT_CUDA_CHECK(cudaMemcpy(base + o, src, n, cudaMemcpyHostToDevice));
  };
  QbitsDeviceWeight& w = a.w;
  w.rows = p.rows, w.cols = p.cols, w.bits = p.bits, w.group = p.group, w.asymmetric = p.asymmetric;
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

void gemv_qbits(const LinearArgs& a, const QbitsDeviceWeight& w, cudaStream_t s) {
  if (a.m <= 0) return;
  check_weight(w);
  if (!a.x || !a.y) fail("CUDA gemv_qbits: x or y is null");
  if (!aligned16(a.x) || a.ldx % 4 != 0)
    fail("CUDA gemv_qbits: x must be 16-byte aligned with ldx % 4 == 0 (ldx = {})", a.ldx);
  if (a.ldx < (a.op == InputOp::SiluMul ? 2 * w.cols : w.cols))
    fail("CUDA gemv_qbits: ldx = {} is shorter than an input row (K = {}, op {})", a.ldx, w.cols, int(a.op));
  if (a.op == InputOp::RmsNorm && (!a.norm_w || !aligned16(a.norm_w)))
    fail("CUDA gemv_qbits: RMSNorm needs a 16-byte aligned norm weight");
  if (a.silu_pairs && (w.rows % 2 != 0 || a.accumulate))
    fail("CUDA gemv_qbits: SiLU pairs need an even row count and no accumulate (N = {})", w.rows);
  if (a.ldy < (a.silu_pairs ? w.rows / 2 : w.rows)) fail("CUDA gemv_qbits: ldy = {} is too small", a.ldy);
  // Larger batches run the GEMV once per 4 rows of x: correct for every op, but W is
  // read ceil(m / 4) times (a tensor-core GEMM for QBITS is future work).
  for (int64_t i0 = 0; i0 < a.m; i0 += kGemvMaxRows) {
    LinearArgs b = a;
    b.x = a.x + i0 * a.ldx;
    b.y = a.y + i0 * a.ldy;
    b.m = std::min<int64_t>(kGemvMaxRows, a.m - i0);
    gemv_qbits_block(b, w, s);
  }
}

}  // namespace anybit::cuda
