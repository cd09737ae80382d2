// AVX-512 VNNI kernels for any-bit weights in the int8 layout (qbits_pack.h).
//
// Each 64-byte code vector holds 16 rows x 4 inputs; vpdpbusd multiplies it (unsigned
// codes) by the broadcast dword of 4 int8 activations and accumulates 16 int32 row sums,
// so the lanes are output rows and no horizontal reduction is ever needed. At the end of
// each weight group the int32 sums are scaled into fp32 accumulators:
//   y += s_g * (xs_g * dot_g - z_g * xsz_g)        (qbits_pack.h, ActQ)
// A tile is MR tokens x NB row blocks; every unpacked code vector feeds MR vpdpbusd.
// GCC 12's AVX-512 intrinsics trip -Wuninitialized spuriously (GCC PR105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <cstring>
#include <utility>

#include "core/error.h"
#include "kernels/qbits_kernels.h"
#include "kernels/qbits_pack.h"

namespace anybit::avx512 {
namespace {

using qbits::ActQ;
using qbits::VnniPack;

constexpr size_t kPrefetch = 1024;

template <int N, class F>
__attribute__((always_inline)) inline void static_for(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    (f(std::integral_constant<int, I>{}), ...);
  }(std::make_integer_sequence<int, N>{});
}

template <int BITS>
struct Planes {
  static constexpr bool p4 = BITS >= 4 && BITS < 8;
  static constexpr bool p2 = BITS != 8 && BITS - (p4 ? 4 : 0) >= 2;
  static constexpr bool p1 = BITS != 8 && BITS - (p4 ? 4 : 0) - (p2 ? 2 : 0) == 1;
  static constexpr int sh2 = p4 ? 4 : 0;            // bit position of the 2-bit plane
  static constexpr int sh1 = sh2 + (p2 ? 2 : 0);    // bit position of the 1-bit plane
  static constexpr int off2 = p4 ? 4 * 64 : 0;      // byte offset of the planes in a unit
  static constexpr int off1 = off2 + (p2 ? 2 * 64 : 0);
};

template <int S>
__attribute__((always_inline)) inline __m512i shift_right(__m512i v) {
  // 16-bit lane shifts: every caller masks a bit range that the bits crossing the byte
  // boundary cannot reach (left shifts <= 6, right shifts keep positions < 8 - S).
  if constexpr (S > 0) return _mm512_srli_epi16(v, S);
  else if constexpr (S < 0) return _mm512_slli_epi16(v, -S);
  else return v;
}

// (t & mask) | v in one instruction.
__attribute__((always_inline)) inline __m512i and_or(__m512i t, __m512i mask, __m512i v) {
  return _mm512_ternarylogic_epi32(t, mask, v, 0xEA);
}

// Unsigned codes of chunk C (inputs 4C..4C+3 of the unit) for 16 rows.
template <int BITS, int C>
__attribute__((always_inline)) inline __m512i unpack(const uint8_t* u) {
  using P = Planes<BITS>;
  if constexpr (BITS == 8) {
    return _mm512_load_si512(u + 64 * C);
  } else {
    __m512i v = _mm512_setzero_si512();
    if constexpr (P::p4) {
      const __m512i w = _mm512_load_si512(u + 64 * (C / 2));
      v = _mm512_and_si512(shift_right<4 * (C % 2)>(w), _mm512_set1_epi8(0x0f));
    }
    if constexpr (P::p2) {
      const __m512i t = shift_right<2 * (C % 4) - P::sh2>(_mm512_load_si512(u + P::off2 + 64 * (C / 4)));
      const __m512i mask = _mm512_set1_epi8(char(3 << P::sh2));
      v = P::p4 ? and_or(t, mask, v) : _mm512_and_si512(t, mask);
    }
    if constexpr (P::p1) {
      const __m512i t = shift_right<(C % 8) - P::sh1>(_mm512_load_si512(u + P::off1));
      v = and_or(t, _mm512_set1_epi8(char(1 << P::sh1)), v);
    }
    return v;
  }
}

inline int32_t load_i32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// y[i0 .. i0+MR) x rows of row blocks [rb0, rb0+NB): full K.
template <int BITS, int MR, int NB>
__attribute__((flatten)) void tile(const VnniPack& p, int64_t rb0, const ActQ& a, int64_t i0, float* y,
                                   int64_t ldy) {
  __m512 f[MR][NB];
  static_for<MR>([&](auto i) { static_for<NB>([&](auto j) { f[i][j] = _mm512_setzero_ps(); }); });
  const uint8_t* cb[NB];
  static_for<NB>([&](auto j) { cb[j] = p.block(rb0 + j); });
  const int8_t* xr[MR];
  static_for<MR>([&](auto i) { xr[i] = a.row(i0 + i); });
  const int upg = p.group / 32;
  const size_t ub = p.unit_bytes;
  const __m512 zsym = _mm512_set1_ps(float(1 << (BITS - 1)));
  const int64_t G = p.ngroups;

  for (int64_t g = 0; g < G; ++g) {
    __m512i acc[MR][NB];
    static_for<MR>([&](auto i) { static_for<NB>([&](auto j) { acc[i][j] = _mm512_setzero_si512(); }); });
    for (int uu = 0; uu < upg; ++uu) {
      const int64_t u = g * upg + uu;
      const int64_t k0 = u * 32;
      // Decode streams each row block from DRAM: software prefetch every line of the
      // unit kPrefetch bytes ahead (the hardware prefetchers lose track of 2 x NB streams).
      if constexpr (MR == 1) {
        static_for<NB>([&](auto j) {
          const char* pf = reinterpret_cast<const char*>(cb[j] + size_t(u) * ub + kPrefetch);
          static_for<BITS>([&](auto l) { _mm_prefetch(pf + 64 * l, _MM_HINT_T0); });
        });
      }
      static_for<8>([&](auto c) {
        __m512i xb[MR];
        static_for<MR>([&](auto i) { xb[i] = _mm512_set1_epi32(load_i32(xr[i] + k0 + 4 * c)); });
        static_for<NB>([&](auto j) {
          const __m512i code = unpack<BITS, c>(cb[j] + size_t(u) * ub);
          static_for<MR>([&](auto i) { acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], code, xb[i]); });
        });
      });
    }
    static_for<NB>([&](auto j) {
      const uint8_t* md = p.meta(rb0 + j, g);
      __m512 s, z;
      if (p.f32_meta) {
        s = _mm512_loadu_ps(md);
        z = p.asym ? _mm512_loadu_ps(md + 64) : zsym;
      } else {
        s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(md)));
        z = p.asym ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(md + 32))) : zsym;
      }
      static_for<MR>([&](auto i) {
        const int64_t ag = (i0 + i) * G + g;
        __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[i][j]), _mm512_set1_ps(a.xs[ag]));
        t = _mm512_fnmadd_ps(z, _mm512_set1_ps(a.xsz[ag]), t);
        f[i][j] = _mm512_fmadd_ps(s, t, f[i][j]);
      });
    });
  }
  static_for<NB>([&](auto j) {
    const int64_t r0 = (rb0 + j) * 16;
    const int64_t left = p.rows - r0;
    const __mmask16 mask = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
    static_for<MR>([&](auto i) { _mm512_mask_storeu_ps(y + (i0 + i) * ldy + r0, mask, f[i][j]); });
  });
}

using TileFn = void (*)(const VnniPack&, int64_t, const ActQ&, int64_t, float*, int64_t);

// Tiles for one bit width: m == 1 uses 1 x NB (NB <= 4 row blocks, four memory streams);
// m > 1 uses MR x NB with MR <= 4 tokens and NB <= 2 row blocks.
template <int BITS>
struct Tiles {
  static constexpr TileFn gemv[4] = {&tile<BITS, 1, 1>, &tile<BITS, 1, 2>, &tile<BITS, 1, 3>, &tile<BITS, 1, 4>};
  static constexpr TileFn gemm[4][2] = {{&tile<BITS, 1, 1>, &tile<BITS, 1, 2>},
                                        {&tile<BITS, 2, 1>, &tile<BITS, 2, 2>},
                                        {&tile<BITS, 3, 1>, &tile<BITS, 3, 2>},
                                        {&tile<BITS, 4, 1>, &tile<BITS, 4, 2>}};
};

template <int BITS>
void run_tiles(const VnniPack& p, const ActQ& a, int64_t m, float* y, int64_t b0, int64_t b1) {
  if (m == 1) {
    for (int64_t rb = b0; rb < b1; rb += 4) {
      const int nb = int(b1 - rb < 4 ? b1 - rb : 4);
      Tiles<BITS>::gemv[nb - 1](p, rb, a, 0, y, p.rows);
    }
    return;
  }
  // Token blocks keep their int8 rows in L2 while the thread's row blocks stream past.
  const int64_t kMc = 64;
  for (int64_t ic = 0; ic < m; ic += kMc) {
    const int64_t ie = ic + kMc < m ? ic + kMc : m;
    for (int64_t rb = b0; rb < b1; rb += 2) {
      const int nb = int(b1 - rb < 2 ? b1 - rb : 2);
      for (int64_t i = ic; i < ie; i += 4) {
        const int mr = int(ie - i < 4 ? ie - i : 4);
        Tiles<BITS>::gemm[mr - 1][nb - 1](p, rb, a, i, y, p.rows);
      }
    }
  }
}

using RunFn = void (*)(const VnniPack&, const ActQ&, int64_t, float*, int64_t, int64_t);
constexpr RunFn kRun[9] = {nullptr, nullptr, &run_tiles<2>, &run_tiles<3>, &run_tiles<4>,
                           &run_tiles<5>, &run_tiles<6>, &run_tiles<7>, &run_tiles<8>};

// Activation quantization of one row (see qbits::quantize_acts_scalar: same arithmetic,
// so results are bit-identical). `k` is a multiple of 32.
void quantize_row(const float* x, int64_t k, int group, bool per_token, const float* inv_is, int8_t* q,
                  float* xs, float* xsz, float* tmp) {
  const float* v = x;
  if (inv_is) {
    for (int64_t c = 0; c < k; c += 16)
      _mm512_storeu_ps(tmp + c, _mm512_mul_ps(_mm512_loadu_ps(x + c), _mm512_loadu_ps(inv_is + c)));
    v = tmp;
  }
  const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  auto amax_of = [&](int64_t c0, int64_t c1) {
    __m512 mx = _mm512_setzero_ps();
    for (int64_t c = c0; c < c1; c += 16) mx = _mm512_max_ps(mx, _mm512_and_ps(_mm512_loadu_ps(v + c), absmask));
    return _mm512_reduce_max_ps(mx);
  };
  const float tok = per_token ? amax_of(0, k) : 0.0f;
  for (int64_t g = 0, c0 = 0; c0 < k; ++g, c0 += group) {
    const float amax = per_token ? tok : amax_of(c0, c0 + group);
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    const __m512 vi = _mm512_set1_ps(inv);
    __m512i sum = _mm512_setzero_si512();
    for (int64_t c = c0; c < c0 + group; c += 16) {
      __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(v + c), vi));
      qi = _mm512_max_epi32(_mm512_min_epi32(qi, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
      sum = _mm512_add_epi32(sum, qi);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + c), _mm512_cvtepi32_epi8(qi));
    }
    xs[g] = amax / 127.0f;
    xsz[g] = xs[g] * float(_mm512_reduce_add_epi32(sum));
  }
}

}  // namespace

void qbits_quantize_acts(const float* x, int64_t m, int64_t k, int group, bool per_token,
                         const float* inv_input_scale, ActQ& out) {
  const int64_t G = k / group;
  auto one = [&](int64_t i, float* tmp) {
    quantize_row(x + i * k, k, group, per_token, inv_input_scale, out.q + i * k, out.xs + i * G,
                 out.xsz + i * G, tmp);
  };
  if (m == 1 || omp_in_parallel()) {
    std::unique_ptr<float[]> tmp(inv_input_scale ? new float[size_t(k)] : nullptr);
    for (int64_t i = 0; i < m; ++i) one(i, tmp.get());
    return;
  }
#pragma omp parallel
  {
    std::unique_ptr<float[]> tmp(inv_input_scale ? new float[size_t(k)] : nullptr);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < m; ++i) one(i, tmp.get());
  }
}

void qbits_int8_matmul(const QuantizedWeight& w, const float* x, int64_t m, float* y) {
  const VnniPack& p = qbits::int8_pack(w);
  const qbits::PackSet& set = qbits::pack_set(w);
  ActQ& a = qbits::act_scratch(m, p.cols, p.ngroups);
  qbits_quantize_acts(x, m, p.cols, p.group, w.act_bits == 8,
                      set.inv_input_scale.empty() ? nullptr : set.inv_input_scale.data(), a);
  const RunFn run = kRun[p.bits];
  // Dynamic chunks of 128 rows: on a shared machine a descheduled thread's share is
  // taken over by the others instead of stalling the whole matmul at the barrier.
  constexpr int64_t kChunk = 8;
  const int64_t nchunks = (p.nrb + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < nchunks; ++c)
    run(p, a, m, y, c * kChunk, (c + 1) * kChunk < p.nrb ? (c + 1) * kChunk : p.nrb);
}

}  // namespace anybit::avx512
