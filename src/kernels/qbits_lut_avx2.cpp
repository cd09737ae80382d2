// AVX2 table-lookup kernels for 2..4-bit weights (layout and arithmetic: qbits_lut.h).
//
// vpshufb looks up 16-entry tables per 128-bit lane, so each quad's table is broadcast
// to both lanes and a lookup vector covers 16 rows x 2 lookups (half of a layout
// vector). Pairs whose two lookups use different quads (the odd plane of 3-bit codes)
// take two shuffles, each zeroing the other element's bytes (index bit 7), OR-ed.
#include <immintrin.h>
#include <omp.h>

#include <cstring>
#include <utility>
#include <vector>

#include "core/error.h"
#include "kernels/qbits_kernels.h"
#include "kernels/qbits_lut.h"

namespace anybit::avx2 {
namespace {

using qbits::LutActs;
using qbits::LutPack;

template <int N, class F>
__attribute__((always_inline)) inline void static_for(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    (f(std::integral_constant<int, I>{}), ...);
  }(std::make_integer_sequence<int, N>{});
}

float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// 8 int32 (each within int8 range) to 8 bytes.
inline void store8(int8_t* dst, __m256i q) {
  const __m256i w = _mm256_packs_epi32(q, q);
  const __m256i b = _mm256_packs_epi16(w, w);
  const int32_t lo = _mm_cvtsi128_si32(_mm256_castsi256_si128(b));
  const int32_t hi = _mm_cvtsi128_si32(_mm256_extracti128_si256(b, 1));
  std::memcpy(dst, &lo, 4);
  std::memcpy(dst + 4, &hi, 4);
}

// Tables of one token (same arithmetic as qbits::build_lut_acts_scalar).
void build_tables_row(const float* x, int64_t k, int group, const float* inv_is, int8_t* tab, float* ts,
                      float* xq, float* scratch) {
  __m256 sgn[4][2];
  for (int t = 0; t < 4; ++t)
    for (int hv = 0; hv < 2; ++hv) {
      alignas(32) float s[8];
      for (int e = 0; e < 8; ++e) s[e] = ((e + 8 * hv) >> t) & 1 ? 1.0f : -1.0f;
      sgn[t][hv] = _mm256_load_ps(s);
    }
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const int64_t qpg = group / 4;
  for (int64_t g = 0, c0 = 0; c0 < k; ++g, c0 += group) {
    __m256 vmax = _mm256_setzero_ps();
    for (int64_t qd = 0; qd < qpg; ++qd) {
      const int64_t c = c0 + qd * 4;
      float h[4];
      for (int t = 0; t < 4; ++t) h[t] = 0.5f * (inv_is ? x[c + t] * inv_is[c + t] : x[c + t]);
      for (int hv = 0; hv < 2; ++hv) {
        __m256 T = _mm256_mul_ps(_mm256_set1_ps(h[0]), sgn[0][hv]);
        T = _mm256_fmadd_ps(_mm256_set1_ps(h[1]), sgn[1][hv], T);
        T = _mm256_fmadd_ps(_mm256_set1_ps(h[2]), sgn[2][hv], T);
        T = _mm256_fmadd_ps(_mm256_set1_ps(h[3]), sgn[3][hv], T);
        _mm256_store_ps(scratch + qd * 16 + 8 * hv, T);
        vmax = _mm256_max_ps(vmax, _mm256_and_ps(T, absmask));
      }
    }
    const float qmax = hmax(vmax);
    const __m256 inv = _mm256_set1_ps(qmax > 0.0f ? 127.0f / qmax : 0.0f);
    int32_t s15 = 0;
    for (int64_t qd = 0; qd < qpg; ++qd)
      for (int hv = 0; hv < 2; ++hv) {
        __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_load_ps(scratch + qd * 16 + 8 * hv), inv));
        q = _mm256_max_epi32(_mm256_min_epi32(q, _mm256_set1_epi32(127)), _mm256_set1_epi32(-127));
        int8_t* dst = tab + (c0 / 4 + qd) * 16 + 8 * hv;
        store8(dst, q);
        if (hv == 1) s15 += dst[7];
      }
    ts[g] = qmax / 127.0f;
    xq[g] = float(2 * s15);
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
constexpr short pair_weight() {
  constexpr qbits::LutPair pr = qbits::lut_pairs(BITS)[P];
  return short((1 << pr.e[0].plane) | ((1 << pr.e[1].plane) << 8));
}

// int8 lookups of pair P for 16 rows; `idx` holds clean nibbles.
template <int BITS, int P>
__attribute__((always_inline)) inline __m256i lookup(const __m256i* tq, __m256i idx) {
  constexpr qbits::LutPair pr = qbits::lut_pairs(BITS)[P];
  if constexpr (pr.e[0].quad == pr.e[1].quad) {
    return _mm256_shuffle_epi8(tq[pr.e[0].quad], idx);
  } else {
    const __m256i r0 = _mm256_shuffle_epi8(tq[pr.e[0].quad], _mm256_or_si256(idx, _mm256_set1_epi16(short(0x8000))));
    const __m256i r1 = _mm256_shuffle_epi8(tq[pr.e[1].quad], _mm256_or_si256(idx, _mm256_set1_epi16(0x0080)));
    return _mm256_or_si256(r0, r1);
  }
}

// One token x the 16-row half blocks [hb0, hb0+NH): full K.
template <int BITS, int NH>
__attribute__((flatten)) void tile(const LutPack& p, int64_t hb0, const LutActs& a, int64_t i, float* y, int64_t ldy) {
  __m256 f[NH][2];
  static_for<NH>([&](auto j) { f[j][0] = f[j][1] = _mm256_setzero_ps(); });
  const uint8_t* cb[NH];
  static_for<NH>([&](auto j) { cb[j] = p.block((hb0 + j) / 2) + 32 * ((hb0 + j) % 2); });
  const int8_t* tb = a.tables(i);
  const __m256i nib = _mm256_set1_epi8(0x0f);
  const int64_t spg = p.group / 16, G = p.ngroups;
  const size_t sb = p.span_bytes;
  const __m256 half_range = _mm256_set1_ps(float((1 << BITS) - 1) * 0.5f);
  for (int64_t g = 0; g < G; ++g) {
    __m256i acc[NH][2];
    static_for<NH>([&](auto j) { acc[j][0] = acc[j][1] = _mm256_setzero_si256(); });
    for (int64_t s = g * spg; s < (g + 1) * spg; ++s) {
      __m256i tq[4];
      for (int q = 0; q < 4; ++q)
        tq[q] = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tb + (s * 4 + q) * 16)));
      static_for<BITS>([&](auto v) {
        static_for<NH>([&](auto j) {
          const __m256i raw = _mm256_load_si256(reinterpret_cast<const __m256i*>(cb[j] + size_t(s) * sb + 64 * v));
          const __m256i lo = _mm256_and_si256(raw, nib);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), nib);
          acc[j][0] = _mm256_add_epi16(acc[j][0], _mm256_maddubs_epi16(_mm256_set1_epi16(pair_weight<BITS, 2 * v>()),
                                                                       lookup<BITS, 2 * v>(tq, lo)));
          acc[j][1] = _mm256_add_epi16(acc[j][1], _mm256_maddubs_epi16(_mm256_set1_epi16(pair_weight<BITS, 2 * v + 1>()),
                                                                       lookup<BITS, 2 * v + 1>(tq, hi)));
        });
      });
    }
    const float xqg = a.xq[i * G + g], tsg = a.ts[i * G + g];
    static_for<NH>([&](auto j) {
      const int64_t hb = hb0 + j;
      const uint8_t* md = p.meta(hb / 2, g);
      const int h = int(hb % 2);
      static_for<2>([&](auto q) {
        const int r = 16 * h + 8 * q;  // first row (within the 32-row block) of these 8
        __m256 s, cz;
        if (p.f32_meta) {
          s = _mm256_loadu_ps(reinterpret_cast<const float*>(md) + r);
          cz = p.asym ? _mm256_sub_ps(half_range, _mm256_loadu_ps(reinterpret_cast<const float*>(md + 128) + r))
                      : _mm256_set1_ps(-0.5f);
        } else {
          s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(md + 2 * r)));
          cz = p.asym ? _mm256_sub_ps(half_range,
                                      _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(md + 64 + 2 * r))))
                      : _mm256_set1_ps(-0.5f);
        }
        const __m256i a0 = _mm256_cvtepi16_epi32(q == 0 ? _mm256_castsi256_si128(acc[j][0]) : _mm256_extracti128_si256(acc[j][0], 1));
        const __m256i a1 = _mm256_cvtepi16_epi32(q == 0 ? _mm256_castsi256_si128(acc[j][1]) : _mm256_extracti128_si256(acc[j][1], 1));
        __m256 t = _mm256_fmadd_ps(cz, _mm256_set1_ps(xqg), _mm256_cvtepi32_ps(_mm256_add_epi32(a0, a1)));
        t = _mm256_mul_ps(t, _mm256_set1_ps(tsg));
        f[j][q] = _mm256_fmadd_ps(s, t, f[j][q]);
      });
    });
  }
  static_for<NH>([&](auto j) {
    static_for<2>([&](auto q) {
      const int64_t r0 = (hb0 + j) * 16 + 8 * q;
      const int64_t left = p.rows - r0;
      if (left <= 0) return;
      float* dst = y + i * ldy + r0;
      if (left >= 8) {
        _mm256_storeu_ps(dst, f[j][q]);
      } else {
        alignas(32) float tmp[8];
        _mm256_store_ps(tmp, f[j][q]);
        for (int64_t r = 0; r < left; ++r) dst[r] = tmp[r];
      }
    });
  });
}

template <int BITS>
void run_tiles(const LutPack& p, const LutActs& a, int64_t m, float* y, int64_t h0, int64_t h1) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t hb = h0; hb < h1; hb += 2) {
      if (h1 - hb >= 2) tile<BITS, 2>(p, hb, a, i, y, p.rows);
      else tile<BITS, 1>(p, hb, a, i, y, p.rows);
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
  const int64_t nh = (p.rows + 15) / 16;
  // Dynamic chunks of 128 rows: on a shared machine a descheduled thread's share is
  // taken over by the others instead of stalling the whole matmul at the barrier.
  constexpr int64_t kChunk = 8;
  const int64_t nchunks = (nh + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < nchunks; ++c)
    run(p, a, m, y, c * kChunk, (c + 1) * kChunk < nh ? (c + 1) * kChunk : nh);
}

}  // namespace anybit::avx2
