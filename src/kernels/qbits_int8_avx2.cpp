// AVX2 integer kernels for any-bit weights in the int8 layout (qbits_pack.h).
//
// Same scheme as qbits_vnni_avx512.cpp on 256-bit vectors: a 64-byte code vector of the
// layout is two ymm halves of 8 rows each ("half blocks"), and the u8 x s8 dot product
// is vpmaddubsw (pairs into int16) + vpmaddwd by ones (into int32). vpmaddubsw saturates
// past 32767, which 2 * 127 * 127 never reaches for codes of up to 7 bits; 8-bit codes
// are split into nibbles (2 * 15 * 127) and recombined with a multiply by 16 in vpmaddwd.
#include <immintrin.h>
#include <omp.h>

#include <cstring>
#include <memory>
#include <utility>

#include "core/error.h"
#include "kernels/qbits_kernels.h"
#include "kernels/qbits_pack.h"

namespace anybit::avx2 {
namespace {

using qbits::ActQ;
using qbits::VnniPack;

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
  static constexpr int sh2 = p4 ? 4 : 0;
  static constexpr int sh1 = sh2 + (p2 ? 2 : 0);
  static constexpr int off2 = p4 ? 4 * 64 : 0;
  static constexpr int off1 = off2 + (p2 ? 2 * 64 : 0);
};

template <int S>
__attribute__((always_inline)) inline __m256i shift_right(__m256i v) {
  // 16-bit shifts, masked afterwards to bits the neighbouring byte cannot reach.
  if constexpr (S > 0) return _mm256_srli_epi16(v, S);
  else if constexpr (S < 0) return _mm256_slli_epi16(v, -S);
  else return v;
}

inline __m256i load(const uint8_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }

// Codes of chunk C for the 8 rows of one half block (`u` already offset by the half).
template <int BITS, int C>
__attribute__((always_inline)) inline __m256i unpack(const uint8_t* u) {
  using P = Planes<BITS>;
  if constexpr (BITS == 8) {
    return load(u + 64 * C);
  } else {
    __m256i v = _mm256_setzero_si256();
    if constexpr (P::p4) v = _mm256_and_si256(shift_right<4 * (C % 2)>(load(u + 64 * (C / 2))), _mm256_set1_epi8(0x0f));
    if constexpr (P::p2) {
      const __m256i t = shift_right<2 * (C % 4) - P::sh2>(load(u + P::off2 + 64 * (C / 4)));
      v = _mm256_or_si256(v, _mm256_and_si256(t, _mm256_set1_epi8(char(3 << P::sh2))));
    }
    if constexpr (P::p1) {
      const __m256i t = shift_right<(C % 8) - P::sh1>(load(u + P::off1));
      v = _mm256_or_si256(v, _mm256_and_si256(t, _mm256_set1_epi8(char(1 << P::sh1))));
    }
    return v;
  }
}

template <int BITS>
__attribute__((always_inline)) inline __m256i dot(__m256i acc, __m256i code, __m256i x) {
  if constexpr (BITS < 8) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(code, x), _mm256_set1_epi16(1)));
  } else {
    const __m256i lo = _mm256_and_si256(code, _mm256_set1_epi8(0x0f));
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(code, 4), _mm256_set1_epi8(0x0f));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x), _mm256_set1_epi16(1)));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x), _mm256_set1_epi16(16)));
  }
}

inline int32_t load_i32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// y[i0 .. i0+MR) x the 8-row half blocks [hb0, hb0+NH): full K.
template <int BITS, int MR, int NH>
__attribute__((flatten)) void tile(const VnniPack& p, int64_t hb0, const ActQ& a, int64_t i0, float* y,
                                   int64_t ldy) {
  __m256 f[MR][NH];
  static_for<MR>([&](auto i) { static_for<NH>([&](auto j) { f[i][j] = _mm256_setzero_ps(); }); });
  const uint8_t* cb[NH];
  static_for<NH>([&](auto j) { cb[j] = p.block((hb0 + j) / 2) + 32 * ((hb0 + j) % 2); });
  const int8_t* xr[MR];
  static_for<MR>([&](auto i) { xr[i] = a.row(i0 + i); });
  const int upg = p.group / 32;
  const size_t ub = p.unit_bytes;
  const __m256 zsym = _mm256_set1_ps(float(1 << (BITS - 1)));
  const int64_t G = p.ngroups;
  for (int64_t g = 0; g < G; ++g) {
    __m256i acc[MR][NH];
    static_for<MR>([&](auto i) { static_for<NH>([&](auto j) { acc[i][j] = _mm256_setzero_si256(); }); });
    for (int uu = 0; uu < upg; ++uu) {
      const int64_t u = g * upg + uu;
      const int64_t k0 = u * 32;
      static_for<8>([&](auto c) {
        __m256i xb[MR];
        static_for<MR>([&](auto i) { xb[i] = _mm256_set1_epi32(load_i32(xr[i] + k0 + 4 * c)); });
        static_for<NH>([&](auto j) {
          const __m256i code = unpack<BITS, c>(cb[j] + size_t(u) * ub);
          static_for<MR>([&](auto i) { acc[i][j] = dot<BITS>(acc[i][j], code, xb[i]); });
        });
      });
    }
    static_for<NH>([&](auto j) {
      const int64_t hb = hb0 + j;
      const uint8_t* md = p.meta(hb / 2, g);
      const int h = int(hb % 2);
      __m256 s, z;
      if (p.f32_meta) {
        s = _mm256_loadu_ps(reinterpret_cast<const float*>(md) + 8 * h);
        z = p.asym ? _mm256_loadu_ps(reinterpret_cast<const float*>(md + 64) + 8 * h) : zsym;
      } else {
        s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(md + 16 * h)));
        z = p.asym ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(md + 32 + 16 * h))) : zsym;
      }
      static_for<MR>([&](auto i) {
        const int64_t ag = (i0 + i) * G + g;
        __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[i][j]), _mm256_set1_ps(a.xs[ag]));
        t = _mm256_fnmadd_ps(z, _mm256_set1_ps(a.xsz[ag]), t);
        f[i][j] = _mm256_fmadd_ps(s, t, f[i][j]);
      });
    });
  }
  static_for<NH>([&](auto j) {
    const int64_t r0 = (hb0 + j) * 8;
    const int64_t left = p.rows - r0;
    static_for<MR>([&](auto i) {
      float* dst = y + (i0 + i) * ldy + r0;
      if (left >= 8) {
        _mm256_storeu_ps(dst, f[i][j]);
      } else {
        alignas(32) float tmp[8];
        _mm256_store_ps(tmp, f[i][j]);
        for (int64_t r = 0; r < left; ++r) dst[r] = tmp[r];
      }
    });
  });
}

using TileFn = void (*)(const VnniPack&, int64_t, const ActQ&, int64_t, float*, int64_t);

template <int BITS>
struct Tiles {
  static constexpr TileFn gemv[4] = {&tile<BITS, 1, 1>, &tile<BITS, 1, 2>, &tile<BITS, 1, 3>, &tile<BITS, 1, 4>};
  static constexpr TileFn gemm[4] = {&tile<BITS, 1, 1>, &tile<BITS, 2, 1>, &tile<BITS, 3, 1>, &tile<BITS, 4, 1>};
};

// Half blocks [h0, h1) of this thread; halves past the last row are skipped.
template <int BITS>
void run_tiles(const VnniPack& p, const ActQ& a, int64_t m, float* y, int64_t h0, int64_t h1) {
  if (m == 1) {
    for (int64_t hb = h0; hb < h1; hb += 4) {
      const int nh = int(h1 - hb < 4 ? h1 - hb : 4);
      Tiles<BITS>::gemv[nh - 1](p, hb, a, 0, y, p.rows);
    }
    return;
  }
  const int64_t kMc = 64;
  for (int64_t ic = 0; ic < m; ic += kMc) {
    const int64_t ie = ic + kMc < m ? ic + kMc : m;
    for (int64_t hb = h0; hb < h1; ++hb)
      for (int64_t i = ic; i < ie; i += 4) {
        const int mr = int(ie - i < 4 ? ie - i : 4);
        Tiles<BITS>::gemm[mr - 1](p, hb, a, i, y, p.rows);
      }
  }
}

using RunFn = void (*)(const VnniPack&, const ActQ&, int64_t, float*, int64_t, int64_t);
constexpr RunFn kRun[9] = {nullptr, nullptr, &run_tiles<2>, &run_tiles<3>, &run_tiles<4>,
                           &run_tiles<5>, &run_tiles<6>, &run_tiles<7>, &run_tiles<8>};

float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

// Same arithmetic as qbits::quantize_acts_scalar (bit-identical results).
void quantize_row(const float* x, int64_t k, int group, bool per_token, const float* inv_is, int8_t* q,
                  float* xs, float* xsz, float* tmp) {
  const float* v = x;
  if (inv_is) {
    for (int64_t c = 0; c < k; c += 8)
      _mm256_storeu_ps(tmp + c, _mm256_mul_ps(_mm256_loadu_ps(x + c), _mm256_loadu_ps(inv_is + c)));
    v = tmp;
  }
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  auto amax_of = [&](int64_t c0, int64_t c1) {
    __m256 mx = _mm256_setzero_ps();
    for (int64_t c = c0; c < c1; c += 8) mx = _mm256_max_ps(mx, _mm256_and_ps(_mm256_loadu_ps(v + c), absmask));
    return hmax(mx);
  };
  const float tok = per_token ? amax_of(0, k) : 0.0f;
  for (int64_t g = 0, c0 = 0; c0 < k; ++g, c0 += group) {
    const float amax = per_token ? tok : amax_of(c0, c0 + group);
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    const __m256 vi = _mm256_set1_ps(inv);
    __m256i sum = _mm256_setzero_si256();
    for (int64_t c = c0; c < c0 + group; c += 8) {
      __m256i qi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v + c), vi));
      qi = _mm256_max_epi32(_mm256_min_epi32(qi, _mm256_set1_epi32(127)), _mm256_set1_epi32(-127));
      sum = _mm256_add_epi32(sum, qi);
      const __m256i w16 = _mm256_packs_epi32(qi, qi);    // per lane: q0..q3 q0..q3
      const __m256i b8 = _mm256_packs_epi16(w16, w16);   // per lane: q0..q3 x4
      const int32_t lo = _mm_cvtsi128_si32(_mm256_castsi256_si128(b8));
      const int32_t hi = _mm_cvtsi128_si32(_mm256_extracti128_si256(b8, 1));
      std::memcpy(q + c, &lo, 4);
      std::memcpy(q + c + 4, &hi, 4);
    }
    xs[g] = amax / 127.0f;
    xsz[g] = xs[g] * float(hsum(sum));
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
  const int64_t nh = (p.rows + 7) / 8;  // half blocks holding at least one row
  // Dynamic chunks of 128 rows: on a shared machine a descheduled thread's share is
  // taken over by the others instead of stalling the whole matmul at the barrier.
  constexpr int64_t kChunk = 16;
  const int64_t nchunks = (nh + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < nchunks; ++c)
    run(p, a, m, y, c * kChunk, (c + 1) * kChunk < nh ? (c + 1) * kChunk : nh);
}

}  // namespace anybit::avx2
