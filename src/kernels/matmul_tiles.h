// The GEMV/GEMM driver shared by the SIMD matmul kernels.
//
// An ISA file (matmul_avx2.cpp, matmul_avx512.cpp) defines ANYBIT_SIMD_NS, a vector
// traits type S and one weight policy per dtype, then includes this header. Every
// instantiation therefore lives in that ISA's namespace: inline code compiled with
// different -m flags must never be merged by the linker, or an AVX-512 copy could be
// picked for a CPU without it.
//
// Scheme ("dot form"): an MR x NR register tile keeps one vector of partial sums per
// (activation row, weight row) pair, vectorised along K, and reduces them once at the
// end. Weight rows are read straight from their stored format and converted to fp32 in
// registers (a shift or a mask for bf16, vcvtph2ps for f16), so no packed copy of the
// weights is ever written: each converted weight vector feeds MR FMAs, and the NR rows of
// a tile stay in L1/L2 while all activation rows of a block stream past them.
//
// K is processed in blocks of 32 (the Q8_0/Q4_0 block size). A weight policy W provides:
//   kBlockBytes          bytes of one 32-element block of a row
//   kPermuteA            activations must be reordered inside each block (S::pack_a)
//   part<P>(blk)         fp32 vector for activation slots [P*L, P*L+L) of the block
// S provides V, kLanes (L), kParts (= 32 / L), zero/load/fma/hsum, pack_a, prefetch, and
// the tile shapes kMR x kNR (m > 1) and 1 x kNR1 (m == 1).
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
// ever crosses the end of a weight row.
// flatten: every static_for lambda must be inlined so the accumulators live in registers.
template <class S, class W, int MR, int NR, bool kPrefetch>
__attribute__((flatten)) void tile(const float* a, int64_t lda, const uint8_t* w, size_t ws, int64_t nb, int rem,
          float* y, int64_t ldy) {
  using V = typename S::V;
  constexpr int L = S::kLanes;
  V acc[MR][NR];
  static_for<MR>([&](auto i) { static_for<NR>([&](auto j) { acc[i][j] = S::zero(); }); });

  auto block = [&](const uint8_t* base, size_t stride, const float* ab) {
    static_for<S::kParts>([&](auto p) {
      V av[MR];
      static_for<MR>([&](auto i) { av[i] = S::load(ab + i * lda + p * L); });
      static_for<NR>([&](auto j) {
        const V wv = W::template part<p>(base + j * stride);
        static_for<MR>([&](auto i) { acc[i][j] = S::fma(av[i], wv, acc[i][j]); });
      });
    });
  };

  const uint8_t* wb = w;
  const float* ab = a;
  for (int64_t b = 0; b < nb; ++b, wb += W::kBlockBytes, ab += 32) {
    if constexpr (kPrefetch) {
      static_for<NR>([&](auto j) {
        static_for<(W::kBlockBytes + 63) / 64>(
            [&](auto l) { S::prefetch(wb + j * ws + S::kPrefetchDist + l * 64); });
      });
    }
    block(wb, ws, ab);
  }
  if (rem) {
    alignas(64) uint8_t tmp[NR][W::kBlockBytes];
    std::memset(tmp, 0, sizeof(tmp));
    for (int j = 0; j < NR; ++j) std::memcpy(tmp[j], wb + j * ws, size_t(rem) * W::kElemBytes);
    block(&tmp[0][0], W::kBlockBytes, ab);
  }
  static_for<MR>([&](auto i) {
    static_for<NR>([&](auto j) { y[i * ldy + j] = S::hsum(acc[i][j]); });
  });
}

using TileFn = void (*)(const float*, int64_t, const uint8_t*, size_t, int64_t, int, float*,
                        int64_t);

// Every (mr, nr) shape up to the maxima, so row and column remainders get exact tiles.
template <class S, class W, int MRmax, int NRmax, bool kPrefetch>
struct TileTable {
  template <int... I>
  static constexpr auto make(std::integer_sequence<int, I...>) {
    struct Arr {
      TileFn f[sizeof...(I)];
    };
    return Arr{{&tile<S, W, I / NRmax + 1, I % NRmax + 1, kPrefetch>...}};
  }
  static constexpr auto fns = make(std::make_integer_sequence<int, MRmax * NRmax>{});
  static TileFn get(int mr, int nr) { return fns.f[(mr - 1) * NRmax + (nr - 1)]; }
};

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

  const bool pack = W::kPermuteA || rem != 0;
  float* buf = pack ? activation_scratch().get(size_t(m) * size_t(kpad)) : nullptr;
  const float* a = pack ? buf : x;
  const int64_t lda = pack ? kpad : k;

  // Activation rows per cache block: keep the block's packed rows within ~half of L2
  // so they stay resident while every weight tile of this thread streams past them.
  constexpr int64_t kL2Budget = 512 * 1024;
  int64_t mc = kL2Budget / (kpad * int64_t(sizeof(float)));
  mc = mc < S::kMR ? S::kMR : mc / S::kMR * S::kMR;

#pragma omp parallel
  {
    if (pack) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < m; ++i) S::pack_a(x + i * k, k, buf + i * kpad, W::kPermuteA);
    }
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    // Contiguous row ranges (multiples of 16) so each thread streams its own slice.
    const int64_t chunk = ((n + nt - 1) / nt + 15) / 16 * 16;
    const int64_t n0 = chunk * t < n ? chunk * t : n;
    const int64_t n1 = n0 + chunk < n ? n0 + chunk : n;
    if (m == 1) {
      for (int64_t j = n0; j < n1; j += S::kNR1) {
        const int nr = int(n1 - j < S::kNR1 ? n1 - j : S::kNR1);
        TileTable<S, W, 1, S::kNR1, true>::get(1, nr)(a, lda, w + size_t(j) * ws, ws, nb, rem,
                                                       y + j, n);
      }
    } else {
      for (int64_t i0 = 0; i0 < m; i0 += mc) {
        const int64_t i1 = i0 + mc < m ? i0 + mc : m;
        for (int64_t j = n0; j < n1; j += S::kNR) {
          const int nr = int(n1 - j < S::kNR ? n1 - j : S::kNR);
          for (int64_t i = i0; i < i1; i += S::kMR) {
            const int mr = int(i1 - i < S::kMR ? i1 - i : S::kMR);
            TileTable<S, W, S::kMR, S::kNR, false>::get(mr, nr)(
                a + i * lda, lda, w + size_t(j) * ws, ws, nb, rem, y + i * n + j, n);
          }
        }
      }
    }
  }
}

}  // namespace anybit::ANYBIT_SIMD_NS
