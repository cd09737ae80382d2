// Building blocks of the tensor-core decode attention (attention_decode_mma_cuda.cu): the PTX
// wrappers and one "tile policy" per cache dtype. A policy owns a warp's per-lane state for
// one query row and kv head (Q as the B fragment, the O^T accumulators) and knows how to
// stage a 16-key tile of K and V in shared memory, turn it into scores S^T[16 keys x 8 heads]
// and add P^T's weighted V rows to O^T. Lane (g, tq) = (lane / 4, lane % 4) throughout, as in
// the mma.sync fragment layouts; the group's query heads are the 8 columns (n).
#pragma once
#include "kernels/cuda_common.cuh"

namespace anybit::cuda::detail {

constexpr int kTile = 16;  // keys per warp step

// mma.sync m16n8k16 with 16-bit inputs (f16 or bf16) and fp32 accumulation, and the pair
// packing of its operands.
template <DType D>
struct MmaOps {
  static_assert(D == DType::F16 || D == DType::BF16, "MmaOps: f16 or bf16");
  __device__ static uint32_t pack(float lo, float hi) {
    uint32_t r;
    if constexpr (D == DType::F16) {
      const __half2 h = __floats2half2_rn(lo, hi);
      r = *reinterpret_cast<const uint32_t*>(&h);
    } else {
      const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
      r = *reinterpret_cast<const uint32_t*>(&h);
    }
    return r;
  }
  __device__ static void mma(float (&c)[4], const uint32_t (&x)[4], uint32_t b0, uint32_t b1) {
    if constexpr (D == DType::F16)
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(x[0]), "r"(x[1]), "r"(x[2]), "r"(x[3]), "r"(b0), "r"(b1));
    else
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

// int8 code pair (bytes of two 32-bit words picked by a prmt selector) -> exact f16x2.
// The codes were XORed with 0x80 (now 0..255); 0x6400 | c is the f16 1024 + c.
__device__ __forceinline__ uint32_t i8pair_to_f16x2(uint32_t x, uint32_t y, uint32_t sel) {
  uint32_t r = __byte_perm(x, y, sel) & 0x00ff00ffu;
  r |= 0x64006400u;
  const __half2 h = __hsub2(*reinterpret_cast<const __half2*>(&r), __floats2half2_rn(1152.0f, 1152.0f));
  return *reinterpret_cast<const uint32_t*>(&h);
}

// f16 / bf16 cache: K and V rows staged as they are (rows padded by 16 bytes, so the 8 rows
// one ldmatrix reads fall in 8 different bank quads), fragments through ldmatrix.
template <DType D, int HD>
struct HalfTiles {
  using Ops = MmaOps<D>;
  static constexpr DType kDType = D;
  static constexpr int KS = HD / 16;          // 16-column steps over head_dim
  static constexpr int RS = (HD + 8) * 2;     // staged row stride, bytes
  static constexpr int kStageBytes = 2 * kTile * RS;
  static constexpr int kStages = 2;  // cp.async ring depth per warp: one tile loads while one is used
  static constexpr bool kPatchable = true;  // a staged row can be overwritten by patch_row
  uint32_t qb[KS][2];
  float o[KS][4];  // o[j]: dims 16j + g (regs 0, 1), 16j + g + 8 (regs 2, 3); heads 2tq, 2tq + 1

  __device__ void init(const float* qrow, bool live, int tq) {
#pragma unroll
    for (int s = 0; s < KS; ++s) {
      const int d = 16 * s + 2 * tq;
      qb[s][0] = Ops::pack(live ? qrow[d] : 0.0f, live ? qrow[d + 1] : 0.0f);
      qb[s][1] = Ops::pack(live ? qrow[d + 8] : 0.0f, live ? qrow[d + 9] : 0.0f);
    }
#pragma unroll
    for (int j = 0; j < KS; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  }
  // k_rows / v_rows: the tile's first K / V row in global memory; rows >= valid are zeroed.
  __device__ static void issue(unsigned char* dst, const unsigned char* k_rows, const unsigned char* v_rows,
                               const unsigned char*, const unsigned char*, int valid, int lane) {
    constexpr int CH = kTile * HD / 8 / 32;  // 16-byte chunks per lane, K and V each
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      const int e = lane + 32 * c, row = e / (HD / 8), col = (e % (HD / 8)) * 16;
      const uint32_t n = row < valid ? 16u : 0u;
      const int64_t off = n ? int64_t(row) * HD * 2 + col : 0;
      cp_async16(smem_addr(dst + row * RS + col), k_rows + off, n);
      cp_async16(smem_addr(dst + (kTile + row) * RS + col), v_rows + off, n);
    }
  }
  // Raw scores S^T: sc[0..1] key g, sc[2..3] key g + 8 (heads 2tq, 2tq + 1).
  __device__ void scores(const unsigned char* st, int lane, float (&sc)[4]) const {
    const int mi = lane >> 3, mr = lane & 7;
    const uint32_t addr = smem_addr(st + ((mi & 1) * 8 + mr) * RS + (mi >> 1) * 16);
    sc[0] = sc[1] = sc[2] = sc[3] = 0.0f;
#pragma unroll
    for (int s = 0; s < KS; ++s) {
      uint32_t ka[4];
      ldmatrix_x4(ka, addr + s * 32);
      Ops::mma(sc, ka, qb[s][0], qb[s][1]);
    }
  }
  __device__ static float key_scale(const unsigned char*, int) { return 1.0f; }
  // Row `row` of the staged tile `st` from fp32 K and V rows, rounded as the cache stores them.
  __device__ static void patch_row(unsigned char* st, int row, const float* k, const float* v, int lane) {
    for (int d = lane; d < HD; d += 32) {
      Elt<D>::store(st + row * RS, d, k[d]);
      Elt<D>::store(st + (kTile + row) * RS, d, v[d]);
    }
  }
  // O^T += V^T . P^T, p as in scores().
  __device__ void accumulate(const unsigned char* st, int lane, const float (&p)[4]) {
    const uint32_t pb0 = movmatrix_trans(Ops::pack(p[0], p[1])), pb1 = movmatrix_trans(Ops::pack(p[2], p[3]));
    const int mi = lane >> 3, mr = lane & 7;
    const uint32_t addr = smem_addr(st + (kTile + (mi >> 1) * 8 + mr) * RS + (mi & 1) * 16);
#pragma unroll
    for (int j = 0; j < KS; ++j) {
      uint32_t va[4];
      ldmatrix_x4_trans(va, addr + j * 32);
      Ops::mma(o[j], va, pb0, pb1);
    }
  }
  __device__ void rescale(int h, float r) {
#pragma unroll
    for (int j = 0; j < KS; ++j) o[j][h] *= r, o[j][h + 2] *= r;
  }
  // Head (2tq + h)'s part of O into row[HD].
  __device__ void store(float* row, int h, int g) const {
#pragma unroll
    for (int j = 0; j < KS; ++j) row[16 * j + g] = o[j][h], row[16 * j + g + 8] = o[j][h + 2];
  }
};

// int8 cache: codes staged as they are (K rows padded by 32 bytes, V rows by 16: no bank
// conflicts for the 8-byte loads below), plus the tile's 16 K and 16 V scales. Fragments are
// built from 8-byte shared loads and converted exactly to f16 (codes -127..127), so the head
// dimensions are visited in a permuted order, which the dot products do not see:
//   scores: 16-column step s reads bytes 32 (s / 2) + 8 tq + 4 (s % 2) + {0..3} of keys g, g + 8
//           (Q is loaded in the same order);
//   output: step j's rows g and g + 8 are dims KS g + j and KS (g + 8) + j, so a lane reads KS
//           contiguous bytes per V row.
// K scales multiply the scores; V scales multiply the probabilities, relative to a warp
// reference R (O^T is kept in units of R, which moves up only when a tile's largest V scale
// exceeds 64 R, so the f16 probabilities stay below 2^14).
template <int HD>
struct Int8Tiles {
  static_assert(HD == 64 || HD == 128, "int8 tiles: head_dim 64 or 128");
  using Ops = MmaOps<DType::F16>;
  static constexpr DType kDType = DType::I8;
  static constexpr int KS = HD / 16;
  static constexpr int RSK = HD + 32, RSV = HD + 16;
  static constexpr int kScales = kTile * (RSK + RSV);
  static constexpr int kStageBytes = kScales + 2 * kTile * 4;
  static constexpr int kStages = 3;  // stages are small: two tiles load while one is used
  static constexpr bool kPatchable = false;  // a row's codes and scale: tiles are staged after the write
  uint32_t qb[KS][2];
  float o[KS][4];  // o[j]: dims KS g + j (regs 0, 1), KS (g + 8) + j (regs 2, 3)
  float R = 0.0f;

  __device__ void init(const float* qrow, bool live, int tq) {
#pragma unroll
    for (int s = 0; s < KS; ++s) {
      const int d = 32 * (s / 2) + 8 * tq + 4 * (s % 2);
      qb[s][0] = Ops::pack(live ? qrow[d] : 0.0f, live ? qrow[d + 1] : 0.0f);
      qb[s][1] = Ops::pack(live ? qrow[d + 2] : 0.0f, live ? qrow[d + 3] : 0.0f);
    }
#pragma unroll
    for (int j = 0; j < KS; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  }
  __device__ static void issue(unsigned char* dst, const unsigned char* k_rows, const unsigned char* v_rows,
                               const unsigned char* k_scales, const unsigned char* v_scales, int valid, int lane) {
    constexpr int CH = kTile * HD / 16 / 32;  // 16-byte chunks per lane, K and V each
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      const int e = lane + 32 * c, row = e / (HD / 16), col = (e % (HD / 16)) * 16;
      const uint32_t n = row < valid ? 16u : 0u;
      const int64_t off = n ? int64_t(row) * HD + col : 0;
      cp_async16(smem_addr(dst + row * RSK + col), k_rows + off, n);
      cp_async16(smem_addr(dst + kTile * RSK + row * RSV + col), v_rows + off, n);
    }
    // Scales of rows past the context are finite (written or zeroed), and their codes are 0.
    if (lane < 8)
      cp_async16(smem_addr(dst + kScales + lane * 16), (lane < 4 ? k_scales : v_scales) + (lane & 3) * 16, 16u);
  }
  __device__ void scores(const unsigned char* st, int lane, float (&sc)[4]) const {
    const int g = lane >> 2, tq = lane & 3;
    sc[0] = sc[1] = sc[2] = sc[3] = 0.0f;
#pragma unroll
    for (int u = 0; u < HD / 32; ++u) {
      const uint2 w0 = *reinterpret_cast<const uint2*>(st + g * RSK + 32 * u + 8 * tq);
      const uint2 w1 = *reinterpret_cast<const uint2*>(st + (g + 8) * RSK + 32 * u + 8 * tq);
      const uint32_t x0[2] = {w0.x ^ 0x80808080u, w0.y ^ 0x80808080u};
      const uint32_t x1[2] = {w1.x ^ 0x80808080u, w1.y ^ 0x80808080u};
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        // rows g, g + 8 x columns {0, 1} and {2, 3} of this 4-byte group
        const uint32_t ka[4] = {i8pair_to_f16x2(x0[h], 0, 0x4140), i8pair_to_f16x2(x1[h], 0, 0x4140),
                                i8pair_to_f16x2(x0[h], 0, 0x4342), i8pair_to_f16x2(x1[h], 0, 0x4342)};
        Ops::mma(sc, ka, qb[2 * u + h][0], qb[2 * u + h][1]);
      }
    }
  }
  __device__ static float key_scale(const unsigned char* st, int key) {
    return reinterpret_cast<const float*>(st + kScales)[key];
  }
  __device__ void accumulate(const unsigned char* st, int lane, const float (&p)[4]) {
    const int g = lane >> 2, tq = lane & 3;
    const float* vs = reinterpret_cast<const float*>(st + kScales) + kTile;
    const float s0 = vs[g], s1 = vs[g + 8];
    float top = fmaxf(s0, s1);
    top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, 4));
    top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, 8));
    top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, 16));
    if (top > 64.0f * R) {  // also the first tile (R = 0)
      const float r = R / top;
#pragma unroll
      for (int j = 0; j < KS; ++j) o[j][0] *= r, o[j][1] *= r, o[j][2] *= r, o[j][3] *= r;
      R = top;
    }
    const float f0 = R > 0.0f ? s0 / R : 0.0f, f1 = R > 0.0f ? s1 / R : 0.0f;
    const uint32_t pb0 = movmatrix_trans(Ops::pack(p[0] * f0, p[1] * f0));
    const uint32_t pb1 = movmatrix_trans(Ops::pack(p[2] * f1, p[3] * f1));
    // V rows 2tq, 2tq + 1, 2tq + 8, 2tq + 9 at bytes KS g and KS (g + 8).
    const unsigned char* vb = st + kTile * RSK;
    uint32_t w[4][2][KS / 4];  // [key][row half][4-byte word]
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int key = 2 * tq + (k & 1) + (k >> 1) * 8;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const unsigned char* p8 = vb + key * RSV + KS * (g + 8 * r);
        if constexpr (KS == 8) {
          const uint2 v = *reinterpret_cast<const uint2*>(p8);
          w[k][r][0] = v.x ^ 0x80808080u, w[k][r][1] = v.y ^ 0x80808080u;
        } else {
          w[k][r][0] = *reinterpret_cast<const uint32_t*>(p8) ^ 0x80808080u;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < KS; ++j) {
      const int wi = j / 4, b = j % 4;
      // byte b of the first key's word to half 0, of the second key's word to half 1
      const uint32_t sel = uint32_t(b) | (uint32_t(4 + b) << 8);
      const uint32_t va[4] = {i8pair_to_f16x2(w[0][0][wi], w[1][0][wi], sel),
                              i8pair_to_f16x2(w[0][1][wi], w[1][1][wi], sel),
                              i8pair_to_f16x2(w[2][0][wi], w[3][0][wi], sel),
                              i8pair_to_f16x2(w[2][1][wi], w[3][1][wi], sel)};
      Ops::mma(o[j], va, pb0, pb1);
    }
  }
  __device__ void rescale(int h, float r) {
#pragma unroll
    for (int j = 0; j < KS; ++j) o[j][h] *= r, o[j][h + 2] *= r;
  }
  __device__ void store(float* row, int h, int g) const {
#pragma unroll
    for (int j = 0; j < KS; ++j) row[KS * g + j] = o[j][h] * R, row[KS * (g + 8) + j] = o[j][h + 2] * R;
  }
};

}  // namespace anybit::cuda::detail
