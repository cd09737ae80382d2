// AVX-512 table-lookup kernels for 2..4-bit weights (layout and arithmetic: qbits_lut.h).
//
// Per 16-input span and 32 rows, each of the `bits` 64-byte code vectors yields two
// index vectors (low / high nibbles, with the table selector OR-ed into bits 4..5 by one
// vpternlogd); vpermb looks up 64 int8 partial sums at once from the span's 4 tables,
// vpmaddubsw weights the two bit planes of each pair and sums them per row into int16,
// and vpaddw accumulates. The lookups need AVX512-VBMI (checked before use).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <cstring>
#include <utility>
#include <vector>

#include "core/error.h"
#include "kernels/qbits_kernels.h"
#include "kernels/qbits_lut.h"

// vpermb: this whole file may use AVX512-VBMI; its only entry point is reached after
// qbits_select.cpp checked the CPU for it.
#pragma GCC target("avx512vbmi")

namespace anybit::avx512 {
namespace {

using qbits::LutActs;
using qbits::LutPack;

template <int N, class F>
__attribute__((always_inline)) inline void static_for(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    (f(std::integral_constant<int, I>{}), ...);
  }(std::make_integer_sequence<int, N>{});
}

// Tables of one token (see qbits::build_lut_acts_scalar; same arithmetic, same results).
// `scratch` holds group / 4 * 16 floats.
void build_tables_row(const float* x, int64_t k, int group, const float* inv_is, int8_t* tab, float* ts,
                      float* xq, float* scratch) {
  __m512 sgn[4];
  for (int t = 0; t < 4; ++t) {
    alignas(64) float s[16];
    for (int e = 0; e < 16; ++e) s[e] = (e >> t) & 1 ? 1.0f : -1.0f;
    sgn[t] = _mm512_load_ps(s);
  }
  const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  const int64_t qpg = group / 4;
  for (int64_t g = 0, c0 = 0; c0 < k; ++g, c0 += group) {
    __m512 vmax = _mm512_setzero_ps();
    for (int64_t qd = 0; qd < qpg; ++qd) {
      const int64_t c = c0 + qd * 4;
      float h[4];
      for (int t = 0; t < 4; ++t) h[t] = 0.5f * (inv_is ? x[c + t] * inv_is[c + t] : x[c + t]);
      // s_t * h_t is exact, so each fma rounds exactly like the scalar addition.
      __m512 T = _mm512_mul_ps(_mm512_set1_ps(h[0]), sgn[0]);
      T = _mm512_fmadd_ps(_mm512_set1_ps(h[1]), sgn[1], T);
      T = _mm512_fmadd_ps(_mm512_set1_ps(h[2]), sgn[2], T);
      T = _mm512_fmadd_ps(_mm512_set1_ps(h[3]), sgn[3], T);
      _mm512_store_ps(scratch + qd * 16, T);
      vmax = _mm512_max_ps(vmax, _mm512_and_ps(T, absmask));
    }
    const float qmax = _mm512_reduce_max_ps(vmax);
    const __m512 inv = _mm512_set1_ps(qmax > 0.0f ? 127.0f / qmax : 0.0f);
    __m512i s15 = _mm512_setzero_si512();
    for (int64_t qd = 0; qd < qpg; ++qd) {
      __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_load_ps(scratch + qd * 16), inv));
      q = _mm512_max_epi32(_mm512_min_epi32(q, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
      s15 = _mm512_add_epi32(s15, q);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(tab + (c0 / 4 + qd) * 16), _mm512_cvtepi32_epi8(q));
    }
    alignas(64) int32_t lanes[16];
    _mm512_store_si512(lanes, s15);
    ts[g] = qmax / 127.0f;
    xq[g] = float(2 * lanes[15]);
  }
}

void build_tables(const float* x, int64_t m, int64_t k, int group, const float* inv_is, LutActs& a) {
  const int64_t G = k / group;
  auto rows = [&](int64_t i0, int64_t i1) {
    alignas(64) float scratch[32 * 16];
    for (int64_t i = i0; i < i1; ++i)
      build_tables_row(x + i * k, k, group, inv_is, a.t + i * a.nspans * 64, a.ts + i * G, a.xq + i * G, scratch);
  };
  if (m == 1 || omp_in_parallel()) return rows(0, m);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i) rows(i, i + 1);
}

template <int BITS, int P>
constexpr short pair_sel() {
  constexpr qbits::LutPair pr = qbits::lut_pairs(BITS)[P];
  return short((pr.e[0].quad << 4) | (pr.e[1].quad << 12));
}
template <int BITS, int P>
constexpr short pair_weight() {
  constexpr qbits::LutPair pr = qbits::lut_pairs(BITS)[P];
  return short((1 << pr.e[0].plane) | ((1 << pr.e[1].plane) << 8));
}

// y[i0 .. i0+MR) x rows of the 32-row blocks [rb0, rb0+NB): full K.
template <int BITS, int MR, int NB>
__attribute__((flatten)) void tile(const LutPack& p, int64_t rb0, const LutActs& a,
                                                          int64_t i0, float* y, int64_t ldy) {
  __m512 f[MR][NB][2];
  static_for<MR>([&](auto i) {
    static_for<NB>([&](auto j) { f[i][j][0] = f[i][j][1] = _mm512_setzero_ps(); });
  });
  const uint8_t* cb[NB];
  static_for<NB>([&](auto j) { cb[j] = p.block(rb0 + j); });
  const int8_t* tb[MR];
  static_for<MR>([&](auto i) { tb[i] = a.tables(i0 + i); });
  const __m512i nib = _mm512_set1_epi8(0x0f);
  const int64_t spg = p.group / 16, G = p.ngroups;
  const size_t sb = p.span_bytes;
  const __m512 half_range = _mm512_set1_ps(float((1 << BITS) - 1) * 0.5f);
  for (int64_t g = 0; g < G; ++g) {
    __m512i acc[MR][NB][2];
    static_for<MR>([&](auto i) {
      static_for<NB>([&](auto j) { acc[i][j][0] = acc[i][j][1] = _mm512_setzero_si512(); });
    });
    for (int64_t s = g * spg; s < (g + 1) * spg; ++s) {
      __m512i tab[MR];
      static_for<MR>([&](auto i) { tab[i] = _mm512_load_si512(tb[i] + s * 64); });
      if constexpr (MR == 1) {  // decode streams from DRAM: prefetch every line 1 KiB ahead
        static_for<NB>([&](auto j) {
          const char* pf = reinterpret_cast<const char*>(cb[j] + size_t(s) * sb + 1024);
          static_for<BITS>([&](auto l) { _mm_prefetch(pf + 64 * l, _MM_HINT_T0); });
        });
      }
      static_for<BITS>([&](auto v) {
        constexpr int P0 = 2 * v, P1 = 2 * v + 1;
        static_for<NB>([&](auto j) {
          const __m512i raw = _mm512_load_si512(cb[j] + size_t(s) * sb + 64 * v);
          // (raw & 0x0f) | selector, in one ternary-logic op.
          const __m512i lo = _mm512_ternarylogic_epi32(raw, nib, _mm512_set1_epi16(pair_sel<BITS, P0>()), 0xEA);
          const __m512i hi = _mm512_ternarylogic_epi32(_mm512_srli_epi16(raw, 4), nib,
                                                       _mm512_set1_epi16(pair_sel<BITS, P1>()), 0xEA);
          static_for<MR>([&](auto i) {
            acc[i][j][0] = _mm512_add_epi16(acc[i][j][0], _mm512_maddubs_epi16(_mm512_set1_epi16(pair_weight<BITS, P0>()),
                                                                               _mm512_permutexvar_epi8(lo, tab[i])));
            acc[i][j][1] = _mm512_add_epi16(acc[i][j][1], _mm512_maddubs_epi16(_mm512_set1_epi16(pair_weight<BITS, P1>()),
                                                                               _mm512_permutexvar_epi8(hi, tab[i])));
          });
        });
      });
    }
    static_for<NB>([&](auto j) {
      const uint8_t* md = p.meta(rb0 + j, g);
      static_for<2>([&](auto h) {
        __m512 s, cz;
        if (p.f32_meta) {
          s = _mm512_loadu_ps(md + 64 * h);
          cz = p.asym ? _mm512_sub_ps(half_range, _mm512_loadu_ps(md + 128 + 64 * h)) : _mm512_set1_ps(-0.5f);
        } else {
          s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(md + 32 * h)));
          cz = p.asym ? _mm512_sub_ps(half_range, _mm512_cvtph_ps(_mm256_loadu_si256(
                                                       reinterpret_cast<const __m256i*>(md + 64 + 32 * h))))
                      : _mm512_set1_ps(-0.5f);
        }
        static_for<MR>([&](auto i) {
          const __m512i a0 = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(acc[i][j][0], h));
          const __m512i a1 = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(acc[i][j][1], h));
          const int64_t ag = (i0 + i) * G + g;
          __m512 t = _mm512_fmadd_ps(cz, _mm512_set1_ps(a.xq[ag]), _mm512_cvtepi32_ps(_mm512_add_epi32(a0, a1)));
          t = _mm512_mul_ps(t, _mm512_set1_ps(a.ts[ag]));
          f[i][j][h] = _mm512_fmadd_ps(s, t, f[i][j][h]);
        });
      });
    });
  }
  static_for<NB>([&](auto j) {
    static_for<2>([&](auto h) {
      const int64_t r0 = (rb0 + j) * 32 + 16 * h;
      const int64_t left = p.rows - r0;
      if (left <= 0) return;
      const __mmask16 mask = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
      static_for<MR>([&](auto i) { _mm512_mask_storeu_ps(y + (i0 + i) * ldy + r0, mask, f[i][j][h]); });
    });
  });
}

using TileFn = void (*)(const LutPack&, int64_t, const LutActs&, int64_t, float*, int64_t);

template <int BITS>
void run_tiles(const LutPack& p, const LutActs& a, int64_t m, float* y, int64_t b0, int64_t b1) {
  static constexpr TileFn gemv[2] = {&tile<BITS, 1, 1>, &tile<BITS, 1, 2>};
  static constexpr TileFn gemm[4] = {&tile<BITS, 1, 1>, &tile<BITS, 2, 1>, &tile<BITS, 3, 1>, &tile<BITS, 4, 1>};
  if (m == 1) {
    for (int64_t rb = b0; rb < b1; rb += 2) gemv[b1 - rb >= 2 ? 1 : 0](p, rb, a, 0, y, p.rows);
    return;
  }
  const int64_t kMc = 32;
  for (int64_t ic = 0; ic < m; ic += kMc) {
    const int64_t ie = ic + kMc < m ? ic + kMc : m;
    for (int64_t rb = b0; rb < b1; ++rb)
      for (int64_t i = ic; i < ie; i += 4) gemm[(ie - i < 4 ? ie - i : 4) - 1](p, rb, a, i, y, p.rows);
  }
}

using RunFn = void (*)(const LutPack&, const LutActs&, int64_t, float*, int64_t, int64_t);
constexpr RunFn kRun[5] = {nullptr, nullptr, &run_tiles<2>, &run_tiles<3>, &run_tiles<4>};

}  // namespace

void qbits_lut_matmul(const QuantizedWeight& w, const float* x, int64_t m, float* y) {
  if (w.act_bits == 8) fail("table-lookup kernels do not run W*A8 weights (act_bits 8)");
  const LutPack& p = qbits::lut_pack(w);
  const qbits::PackSet& set = qbits::pack_set(w);
  LutActs& a = qbits::lut_act_scratch(m, p.nspans, p.ngroups);
  build_tables(x, m, p.cols, p.group, set.inv_input_scale.empty() ? nullptr : set.inv_input_scale.data(), a);
  const RunFn run = kRun[p.bits];
  // Dynamic chunks of 128 rows: on a shared machine a descheduled thread's share is
  // taken over by the others instead of stalling the whole matmul at the barrier.
  constexpr int64_t kChunk = 4;
  const int64_t nchunks = (p.nrb + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < nchunks; ++c)
    run(p, a, m, y, c * kChunk, (c + 1) * kChunk < p.nrb ? (c + 1) * kChunk : p.nrb);
}

}  // namespace anybit::avx512
