// The GEMV/GEMM driver shared by the SIMD matmul kernels.
//
// An ISA file (matmul_avx2.cpp, matmul_avx512.cpp) defines ANYBIT_SIMD_NS, a vector
// traits type S and one weight policy per dtype, then includes this header. Every
// instantiation therefore lives in that ISA's namespace: inline code compiled with
// different -m flags must never be merged by the linker, or an AVX-512 copy could be
// picked for a CPU without it.
//
// Two schemes, both with fp32 activations and fp32 accumulation:
// - "dot" (decode, and prefill with K <= 4096): an MR x NR register tile keeps one vector
//   of partial sums per (activation row, weight row) pair, vectorised along K, reduced
//   once at the end. Weight rows are read straight from their stored format and converted
//   in registers (a shift or a mask for bf16, vcvtph2ps for f16): no copy of the weights
//   is ever written, each converted vector feeds MR FMAs, and the NR rows of a tile stay
//   in L1/L2 while the activation rows of a block stream past them.
// - "xt" (prefill with large K): activations transposed, weights converted once per panel
//   and broadcast; see matmul_xt.
//
// K is processed in blocks of 32 (the Q8_0/Q4_0 block size). A weight policy W provides:
//   kBlockBytes, kElemBytes  bytes of one 32-element block of a row / of one element
//   kPermuteA                activations must be reordered inside each block (S::pack_a)
//   part<P>(blk)             fp32 vector for activation slots [P*L, P*L+L) of the block
// S provides V, kLanes (L), kParts (= 32 / L), zero/load/store/broadcast/add/fma/hsum,
// pack_a, prefetch, the dot tile shapes kMR x kNR (m > 1) and 1 x kNR1 (m == 1), and the
// xt tile shape kNRW weight rows x kMV activation vectors.
#pragma once
#ifndef ANYBIT_SIMD_NS
#error "define ANYBIT_SIMD_NS before including matmul_tiles.h"
#endif

#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "kernels/dispatch.h"

namespace anybit::ANYBIT_SIMD_NS {

template <int N, class F>
__attribute__((always_inline)) inline void static_for(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    (f(std::integral_constant<int, I>{}), ...);
  }(std::make_integer_sequence<int, N>{});
}

// Per-thread scratch for packed activations; grows, never shrinks.
struct Scratch {
  float* p = nullptr;
  size_t cap = 0;
  ~Scratch() { std::free(p); }
  float* get(size_t floats) {
    if (floats > cap) {
      std::free(p);
      const size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
      p = static_cast<float*>(std::aligned_alloc(64, bytes));
      cap = p ? floats : 0;
    }
    return p;
  }
};

inline Scratch& activation_scratch() {
  static thread_local Scratch s;
  return s;
}

// y[i, j] = sum_k a[i, k] w[j, k] for MR activation rows and NR weight rows.
// `a` is packed (32-aligned blocks, zero padded); `nb` full blocks; `rem` elements of a
// final partial block (plain dtypes only), read through a zero-padded copy so no load
// ever crosses the end of a weight row. KU consecutive blocks go to separate
// accumulators, so a narrow tile (few rows in flight) still has independent FMA chains.
// flatten: every static_for lambda must be inlined so the accumulators live in registers.
template <class S, class W, int MR, int NR, int KU, bool kPrefetch>
__attribute__((flatten)) void tile(const float* a, int64_t lda, const uint8_t* w, size_t ws,
                                   int64_t nb, int rem, float* y, int64_t ldy) {
  using V = typename S::V;
  constexpr int L = S::kLanes;
  V acc[KU][MR][NR];
  static_for<KU>([&](auto u) {
    static_for<MR>([&](auto i) { static_for<NR>([&](auto j) { acc[u][i][j] = S::zero(); }); });
  });

  auto block = [&](const uint8_t* base, size_t stride, const float* ab, auto u) {
    static_for<S::kParts>([&](auto p) {
      V av[MR];
      static_for<MR>([&](auto i) { av[i] = S::load(ab + i * lda + p * L); });
      static_for<NR>([&](auto j) {
        const V wv = W::template part<p>(base + j * stride);
        static_for<MR>([&](auto i) { acc[u][i][j] = S::fma(av[i], wv, acc[u][i][j]); });
      });
    });
  };
  // kPrefetchDist < 0: fetch the same block of the next tile's rows.
  const size_t pf_off = S::kPrefetchDist >= 0 ? size_t(S::kPrefetchDist) : NR * ws;
  auto prefetch = [&](const uint8_t* wb) {
    if constexpr (kPrefetch) {
      for (int j = 0; j < NR; ++j)
        for (size_t l = 0; l < W::kBlockBytes; l += 64) S::prefetch(wb + j * ws + pf_off + l);
    }
  };

  constexpr std::integral_constant<int, 0> u0;
  const uint8_t* wb = w;
  const float* ab = a;
  int64_t b = 0;
  for (; b + KU <= nb; b += KU, wb += KU * W::kBlockBytes, ab += KU * 32) {
    static_for<KU>([&](auto u) {
      prefetch(wb + u * W::kBlockBytes);
      block(wb + u * W::kBlockBytes, ws, ab + u * 32, u);
    });
  }
  for (; b < nb; ++b, wb += W::kBlockBytes, ab += 32) block(wb, ws, ab, u0);
  if (rem) {
    alignas(64) uint8_t tmp[NR][W::kBlockBytes];
    std::memset(tmp, 0, sizeof(tmp));
    for (int j = 0; j < NR; ++j) std::memcpy(tmp[j], wb + j * ws, size_t(rem) * W::kElemBytes);
    block(&tmp[0][0], W::kBlockBytes, ab, u0);
  }
  static_for<MR>([&](auto i) {
    static_for<NR>([&](auto j) {
      static_for<KU - 1>([&](auto u) { acc[0][i][j] = S::add(acc[0][i][j], acc[u + 1][i][j]); });
      y[i * ldy + j] = S::hsum(acc[0][i][j]);
    });
  });
}

using TileFn = void (*)(const float*, int64_t, const uint8_t*, size_t, int64_t, int, float*,
                        int64_t);

// Every (mr, nr) shape up to the maxima, so row and column remainders get exact tiles.
template <class S, class W, int MRmax, int NRmax, int KU, bool kPrefetch>
struct TileTable {
  template <int... I>
  static constexpr auto make(std::integer_sequence<int, I...>) {
    struct Arr {
      TileFn f[sizeof...(I)];
    };
    return Arr{{&tile<S, W, I / NRmax + 1, I % NRmax + 1, KU, kPrefetch>...}};
  }
  static constexpr auto fns = make(std::make_integer_sequence<int, MRmax * NRmax>{});
  static TileFn get(int mr, int nr) { return fns.f[(mr - 1) * NRmax + (nr - 1)]; }
};

inline Scratch& packed_weight_scratch() {
  static thread_local Scratch s;
  return s;
}
inline Scratch& partial_sum_scratch() {
  static thread_local Scratch s;
  return s;
}

// ---- transposed-activation path (prefill with large K) ---------------------------------
// Vectors run along the activation rows: xt[k][i] holds the packed activations transposed
// (i padded to a multiple of the lane count), and a panel of NRW weight rows is converted
// once per K block to plain fp32 wf[r][k] (no transposition needed), from which each
// weight is broadcast against MV vectors of activations. The conversion is shared by all
// m rows, the inner loop is FMAs plus loads, and there is no horizontal reduction. K is
// blocked so the xt block stays in L2, which the dot scheme cannot do for K = 8192.

// acc[r][v] (+)= sum_k wf[r][k] * xt[k][v*L ..]; then stored to ct[r][..] (partial sums)
// or, on the last K block, to y[i][r] for the valid rows and columns.
template <class S, int NRW, int MV>
__attribute__((flatten)) void xt_tile(const float* xt, int64_t ldx, const float* wf, int64_t kc,
                                      float* ct, int64_t ldc, bool first, float* y, int64_t ldy,
                                      int mi, int nr) {
  using V = typename S::V;
  constexpr int L = S::kLanes;
  V acc[NRW][MV];
  static_for<NRW>([&](auto r) {
    static_for<MV>([&](auto v) { acc[r][v] = first ? S::zero() : S::load(ct + r * ldc + v * L); });
  });
  for (int64_t k = 0; k < kc; ++k, xt += ldx) {
    V xv[MV];
    static_for<MV>([&](auto v) { xv[v] = S::load(xt + v * L); });
    static_for<NRW>([&](auto r) {
      const V wb = S::broadcast(wf + r * kc + k);
      static_for<MV>([&](auto v) { acc[r][v] = S::fma(wb, xv[v], acc[r][v]); });
    });
  }
  if (!y) {
    static_for<NRW>([&](auto r) {
      static_for<MV>([&](auto v) { S::store(ct + r * ldc + v * L, acc[r][v]); });
    });
    return;
  }
  alignas(64) float tmp[NRW][MV * L];
  static_for<NRW>([&](auto r) { static_for<MV>([&](auto v) { S::store(&tmp[r][v * L], acc[r][v]); }); });
  for (int i = 0; i < mi; ++i)
    for (int r = 0; r < nr; ++r) y[i * ldy + r] = tmp[r][i];
}

using XtTileFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, bool,
                          float*, int64_t, int, int);

template <class S, int NRW, int... MV>
constexpr XtTileFn xt_tile_fns[] = {&xt_tile<S, NRW, MV + 1>...};

template <class S, int NRW, int... I>
constexpr XtTileFn xt_tile_for(int mv, std::integer_sequence<int, I...>) {
  return xt_tile_fns<S, NRW, I...>[mv - 1];
}

// One thread's rows [n0, n1) of y for all m activation rows.
template <class S, class W>
void matmul_xt(const float* xt, int64_t mpad, int64_t m, const uint8_t* w, size_t ws,
               int64_t nb, int rem, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  constexpr int L = S::kLanes, NRW = S::kNRW, MVmax = S::kMV;
  constexpr int64_t MB = int64_t(MVmax) * L;  // activation rows per tile
  const int64_t nblk = nb + (rem ? 1 : 0);
  // 32-blocks of K per pass: the xt block (kc x mpad floats) within ~512 KiB of L2.
  int64_t kbs = (512 * 1024) / (mpad * int64_t(sizeof(float)) * 32);
  const int64_t KB = kbs < 8 ? 8 : kbs > 64 ? 64 : kbs;
  float* wf = packed_weight_scratch().get(size_t(NRW) * size_t(KB) * 32);
  // Partial sums between K blocks, [row of this thread][activation] (the last panel may
  // be partial but is stored whole); unused when K fits in one block.
  float* ct = nblk > KB ? partial_sum_scratch().get(size_t(n1 - n0 + NRW) * size_t(mpad)) : nullptr;
  alignas(64) uint8_t tail[NRW][W::kBlockBytes];
  for (int64_t kb0 = 0; kb0 < nblk; kb0 += KB) {
    const int64_t kb1 = kb0 + KB < nblk ? kb0 + KB : nblk;
    const int64_t kc = (kb1 - kb0) * 32;
    const bool first = kb0 == 0, last = kb1 == nblk;
    for (int64_t j = n0; j < n1; j += NRW) {
      const int nr = int(n1 - j < NRW ? n1 - j : NRW);
      // Convert the panel's weights to fp32 (zero rows past nr).
      for (int r = 0; r < NRW; ++r) {
        float* dst = wf + r * kc;
        const uint8_t* row = w + size_t(j + r) * ws;
        for (int64_t b = kb0; b < kb1; ++b, dst += 32) {
          const uint8_t* blk = row + size_t(b) * W::kBlockBytes;
          // Each row is read in short pieces (kc elements), too short for the hardware
          // prefetcher: fetch the next panel's piece while this panel's tiles run.
          if (j + NRW + r < n1)
            for (size_t l = 0; l < W::kBlockBytes; l += 64) S::prefetch(blk + NRW * ws + l);
          if (r >= nr) {
            static_for<S::kParts>([&](auto p) { S::store(dst + p * L, S::zero()); });
            continue;
          }
          if (b == nb) {
            std::memset(tail[r], 0, W::kBlockBytes);
            std::memcpy(tail[r], blk, size_t(rem) * W::kElemBytes);
            blk = tail[r];
          }
          static_for<S::kParts>([&](auto p) { S::store(dst + p * L, W::template part<p>(blk)); });
        }
      }
      for (int64_t i = 0; i < mpad; i += MB) {
        const int mv = int((mpad - i < MB ? mpad - i : MB) / L);
        const int mi = int(m - i < MB ? m - i : MB);
        xt_tile_for<S, NRW>(mv, std::make_integer_sequence<int, MVmax>{})(
            xt + kb0 * 32 * mpad + i, mpad, wf, kc, ct ? ct + (j - n0) * mpad + i : nullptr, mpad,
            first, last ? y + i * ldy + j : nullptr, ldy, mi, nr);
      }
    }
  }
}

template <class S, class W>
void matmul(const float* x, int64_t m, const WeightMatrix& wm, float* y) {
  const int64_t n = wm.rows, k = wm.cols;
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int64_t i = 0; i < m * n; ++i) y[i] = 0.0f;
    return;
  }
  const int64_t nb = k / 32;
  const int rem = int(k % 32);
  const int64_t kpad = (nb + (rem ? 1 : 0)) * 32;
  const size_t ws = size_t(nb) * W::kBlockBytes + size_t(rem) * W::kElemBytes;
  const auto* w = static_cast<const uint8_t*>(wm.data);

  // Large K with enough rows to share the weight conversion: transposed activations.
  const bool xtp = m >= S::kXtMinM && k > 4096;
  const bool pack = xtp || W::kPermuteA || rem != 0;
  // The xt path pads the activation index to whole vectors.
  const int64_t mpad = xtp ? (m + S::kLanes - 1) / S::kLanes * S::kLanes : m;
  float* buf = pack ? activation_scratch().get(size_t(mpad) * size_t(kpad)) : nullptr;
  const float* a = pack ? buf : x;
  const int64_t lda = pack ? kpad : k;

  // Dot path, m > 1: activation rows per cache block, so the block's packed rows stay
  // resident in L2 while every weight tile of this thread streams past them.
  constexpr int64_t kL2Budget = 512 * 1024;
  int64_t mc = kL2Budget / (kpad * int64_t(sizeof(float)));
  mc = mc < S::kMR ? S::kMR : mc / S::kMR * S::kMR;

#pragma omp parallel
  {
    if (xtp) {
      float* row = packed_weight_scratch().get(size_t(kpad));
#pragma omp for schedule(static)
      for (int64_t i = 0; i < mpad; ++i) {
        if (i < m) {
          S::pack_a(x + i * k, k, row, W::kPermuteA);
          for (int64_t c = 0; c < kpad; ++c) buf[c * mpad + i] = row[c];
        } else {
          for (int64_t c = 0; c < kpad; ++c) buf[c * mpad + i] = 0.0f;
        }
      }
    } else if (pack) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < mpad; ++i) {
        if (i < m)
          S::pack_a(x + i * k, k, buf + i * kpad, W::kPermuteA);
        else
          std::memset(buf + i * kpad, 0, size_t(kpad) * sizeof(float));
      }
    }
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    // Contiguous row ranges (multiples of 16) so each thread streams its own slice of the
    // weights.
    const int64_t chunk = ((n + nt - 1) / nt + 15) / 16 * 16;
    const int64_t n0 = chunk * t < n ? chunk * t : n;
    const int64_t n1 = n0 + chunk < n ? n0 + chunk : n;
    if (xtp) {
      if (n0 < n1) matmul_xt<S, W>(buf, mpad, m, w, ws, nb, rem, n0, n1, y, n);
    } else if (m == 1) {
      for (int64_t j = n0; j < n1; j += S::kNR1) {
        const int nr = int(n1 - j < S::kNR1 ? n1 - j : S::kNR1);
        TileTable<S, W, 1, S::kNR1, S::kKU1, true>::get(1, nr)(a, lda, w + size_t(j) * ws, ws,
                                                               nb, rem, y + j, n);
      }
    } else {
      for (int64_t i0 = 0; i0 < m; i0 += mc) {
        const int64_t i1 = i0 + mc < m ? i0 + mc : m;
        for (int64_t j = n0; j < n1; j += S::kNR) {
          const int nr = int(n1 - j < S::kNR ? n1 - j : S::kNR);
          for (int64_t i = i0; i < i1; i += S::kMR) {
            const int mr = int(i1 - i < S::kMR ? i1 - i : S::kMR);
            TileTable<S, W, S::kMR, S::kNR, 1, false>::get(mr, nr)(
                a + i * lda, lda, w + size_t(j) * ws, ws, nb, rem, y + i * n + j, n);
          }
        }
      }
    }
  }
}

}  // namespace anybit::ANYBIT_SIMD_NS
