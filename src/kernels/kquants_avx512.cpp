// AVX-512 matmul kernels for llama.cpp's K-quant blocks (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K;
// layouts in core/kquants.h), read straight from the GGUF bytes.
//
// Activations are quantized per 256-block to int8 (scale xs = amax / 127) with the sums
// of each 16 int8 values (bsum). Every format then reduces to, per block,
//   sum w x ~= xs * (d * sum_v madd(maddubs(codes_v, xq_v), scales_v) - dm * sum_j mv_j bsum_j)
// where codes_v are the unsigned codes of 64 weights (v = 0..3), scales_v their
// sub-block scales spread over int16 lanes (vpmaddwd applies them while it sums pairs),
// and the second term carries the mins (Q2_K, Q4_K, Q5_K: dm = dmin, mv = mins) or the
// code offset (Q3_K: dm = 4 d, Q6_K: dm = 32 d, mv = scales). Q4_K / Q5_K interleave
// their nibbles, so their activations are permuted once per call to match (kQ4Order).
// vpmaddubsw stays below 32767: codes <= 63 against |xq| <= 127.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/kquants.h"
#include "kernels/kquants_kernels.h"
#include "kernels/qbits_pack.h"

namespace anybit::avx512 {
namespace {

template <int N, class F>
__attribute__((always_inline)) inline void static_for(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    (f(std::integral_constant<int, I>{}), ...);
  }(std::make_integer_sequence<int, N>{});
}

inline float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// Quantized activations of m rows: per row k int8 (natural order), k int8 in Q4_K order
// (when needed), k / 256 scales and k / 16 int16 sums of 16.
struct KAct {
  int64_t k = 0;
  int8_t* q = nullptr;
  int8_t* qp = nullptr;
  float* xs = nullptr;
  int16_t* bsum = nullptr;
};

KAct& kact_scratch(int64_t m, int64_t k) {
  struct Buf {
    qbits::AlignedBytes q;
    std::vector<float> xs;
    std::vector<int16_t> bs;
    KAct a;
  };
  static thread_local Buf b;
  const size_t qn = size_t(m) * size_t(k) * 2;
  if (b.q.size() < qn) b.q = qbits::AlignedBytes(qn);
  if (b.xs.size() < size_t(m * k / 256)) b.xs.resize(size_t(m * k / 256));
  if (b.bs.size() < size_t(m * k / 16)) b.bs.resize(size_t(m * k / 16));
  b.a = KAct{k, reinterpret_cast<int8_t*>(b.q.data()), reinterpret_cast<int8_t*>(b.q.data()) + m * k, b.xs.data(),
             b.bs.data()};
  return b.a;
}

void quantize_row(const float* x, int64_t k, bool permute, int8_t* q, int8_t* qp, float* xs, int16_t* bsum) {
  const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  for (int64_t b = 0; b < k / 256; ++b) {
    const float* xb = x + b * 256;
    __m512 mx = _mm512_setzero_ps();
    for (int c = 0; c < 256; c += 16) mx = _mm512_max_ps(mx, _mm512_and_ps(_mm512_loadu_ps(xb + c), absmask));
    const float amax = _mm512_reduce_max_ps(mx);
    const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    xs[b] = amax / 127.0f;
    int8_t* qb = q + b * 256;
    for (int c = 0; c < 256; c += 16) {
      __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + c), inv));
      qi = _mm512_max_epi32(_mm512_min_epi32(qi, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
      bsum[b * 16 + c / 16] = int16_t(_mm512_reduce_add_epi32(qi));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qb + c), _mm512_cvtepi32_epi8(qi));
    }
    if (permute) {
      // Code vector v = 2 * half + nibble pairs byte p with weight
      // 128 * half + 32 * nibble + p + (p >= 32 ? 32 : 0).
      for (int v = 0; v < 4; ++v) {
        const int base = 128 * (v / 2) + 32 * (v % 2);
        std::memcpy(qp + b * 256 + 64 * v, qb + base, 32);
        std::memcpy(qp + b * 256 + 64 * v + 32, qb + base + 64, 32);
      }
    }
  }
}

// Per-format traits: block bytes, activation order, and per block the codes of vector v,
// the int16 scale vector of v, the 16 int16 "mv" values, d and dm.
struct BlockScales {
  __m512i sv[4];
  __m256i mv;
  float d, dm;
};

inline __m512i spread16(__m256i vals16, int a, int b, int c, int d8) {
  // lanes 0..7 <- vals16[a], 8..15 <- [b], 16..23 <- [c], 24..31 <- [d8]
  const __m512i idx = _mm512_set_epi16(d8, d8, d8, d8, d8, d8, d8, d8, c, c, c, c, c, c, c, c, b, b, b, b, b, b, b, b,
                                       a, a, a, a, a, a, a, a);
  return _mm512_permutexvar_epi16(idx, _mm512_castsi256_si512(vals16));
}

struct FQ4K {
  static constexpr size_t kBytes = 144;
  static constexpr bool kQ4Order = true;
  static void scales(const uint8_t* b, BlockScales& s) {
    // decode_k4_scales on 4 bytes at a time, kept in registers (a byte-wise decode through
    // memory stalls on store forwarding when read back as a vector).
    uint32_t a[3];
    std::memcpy(a, b + 4, 12);
    const uint32_t sc03 = a[0] & 0x3f3f3f3fu, mn03 = a[1] & 0x3f3f3f3fu;
    const uint32_t sc47 = (a[2] & 0x0f0f0f0fu) | ((a[0] >> 2) & 0x30303030u);
    const uint32_t mn47 = ((a[2] >> 4) & 0x0f0f0f0fu) | ((a[1] >> 2) & 0x30303030u);
    const __m256i v16 = _mm256_cvtepu8_epi16(_mm_set_epi32(int(mn47), int(mn03), int(sc47), int(sc03)));
    // Vector v = 2 * half + nibble: lanes 0..15 sub-block 4 * half + nibble, 16..31 that + 2.
    for (int v = 0; v < 4; ++v) {
      const int j = 4 * (v / 2) + (v % 2);
      s.sv[v] = spread16(v16, j, j, j + 2, j + 2);
    }
    const __m256i idx = _mm256_set_epi16(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8);
    s.mv = _mm256_permutexvar_epi16(idx, v16);  // min of sub-block j for both of its 16s
    s.d = half(b);
    s.dm = half(b + 2);
  }
  template <int V>
  static __m512i codes(const uint8_t* b) {
    const __m512i raw = _mm512_loadu_si512(b + 16 + 64 * (V / 2));
    return V % 2 ? _mm512_and_si512(_mm512_srli_epi16(raw, 4), _mm512_set1_epi8(15))
                 : _mm512_and_si512(raw, _mm512_set1_epi8(15));
  }
};

struct FQ5K {
  static constexpr size_t kBytes = 176;
  static constexpr bool kQ4Order = true;
  static void scales(const uint8_t* b, BlockScales& s) { FQ4K::scales(b, s); }
  template <int V>
  static __m512i codes(const uint8_t* b) {
    const __m512i raw = _mm512_loadu_si512(b + 48 + 64 * (V / 2));
    const __m512i nib = V % 2 ? _mm512_and_si512(_mm512_srli_epi16(raw, 4), _mm512_set1_epi8(15))
                              : _mm512_and_si512(raw, _mm512_set1_epi8(15));
    // 5th bit: bit 4 * half + nibble of qh[p % 32] for p < 32, + 2 for p >= 32.
    const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16)));
    constexpr int bit = 4 * (V / 2) + (V % 2);
    const __m512i sel = _mm512_inserti64x4(_mm512_set1_epi8(char(1 << bit)), _mm256_set1_epi8(char(1 << (bit + 2))), 1);
    return _mm512_mask_add_epi8(nib, _mm512_test_epi8_mask(qh, sel), nib, _mm512_set1_epi8(16));
  }
};

struct FQ6K {
  static constexpr size_t kBytes = 210;
  static constexpr bool kQ4Order = false;
  static void scales(const uint8_t* b, BlockScales& s) {
    const __m256i v16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192)));
    for (int v = 0; v < 4; ++v) s.sv[v] = spread16(v16, 4 * v, 4 * v + 1, 4 * v + 2, 4 * v + 3);
    s.mv = v16;
    s.d = half(b + 208);
    s.dm = 32.0f * s.d;
  }
  template <int V>
  static __m512i codes(const uint8_t* b) {
    constexpr int n = V / 2;
    const __m512i ql = _mm512_loadu_si512(b + 64 * n);
    const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + 32 * n)));
    __m512i nib, hb;
    if constexpr (V % 2 == 0) {
      nib = _mm512_and_si512(ql, _mm512_set1_epi8(15));
      // bits 0..1 (p < 32) or 2..3 (p >= 32) of qh, moved to bits 4..5
      hb = _mm512_sllv_epi16(qh, _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1));
    } else {
      nib = _mm512_and_si512(_mm512_srli_epi16(ql, 4), _mm512_set1_epi8(15));
      hb = _mm512_srlv_epi16(qh, _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1));
    }
    return _mm512_ternarylogic_epi32(hb, _mm512_set1_epi8(0x30), nib, 0xEA);  // (hb & 0x30) | nib
  }
};

struct FQ2K {
  static constexpr size_t kBytes = 84;
  static constexpr bool kQ4Order = false;
  static void scales(const uint8_t* b, BlockScales& s) {
    const __m256i raw = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b)));
    const __m256i sc = _mm256_and_si256(raw, _mm256_set1_epi16(15));
    for (int v = 0; v < 4; ++v) s.sv[v] = spread16(sc, 4 * v, 4 * v + 1, 4 * v + 2, 4 * v + 3);
    s.mv = _mm256_srli_epi16(raw, 4);
    s.d = half(b + 80);
    s.dm = half(b + 82);
  }
  template <int V>
  static __m512i low2(const uint8_t* qs) {
    // weights 128 n + 32 s + l: bits 2 s of qs[32 n + l]; vector V covers s = 2 (V % 2) + (p >= 32).
    const __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * (V / 2))));
    constexpr int s0 = 2 * (V % 2);
    const __m512i sh = _mm512_inserti64x4(_mm512_set1_epi16(2 * s0), _mm256_set1_epi16(2 * s0 + 2), 1);
    return _mm512_and_si512(_mm512_srlv_epi16(q, sh), _mm512_set1_epi8(3));
  }
  template <int V>
  static __m512i codes(const uint8_t* b) { return low2<V>(b + 16); }
};

struct FQ3K {
  static constexpr size_t kBytes = 110;
  static constexpr bool kQ4Order = false;
  static void scales(const uint8_t* b, BlockScales& s) {
    // decode_k3_scales, 4 scales per 32-bit word, in registers.
    uint32_t a[3];
    std::memcpy(a, b + 96, 12);
    const uint32_t lo4 = 0x0f0f0f0fu, hi2 = 0x03030303u;
    const uint32_t s0 = (a[0] & lo4) | ((a[2] & hi2) << 4);
    const uint32_t s1 = (a[1] & lo4) | (((a[2] >> 2) & hi2) << 4);
    const uint32_t s2 = ((a[0] >> 4) & lo4) | (((a[2] >> 4) & hi2) << 4);
    const uint32_t s3 = ((a[1] >> 4) & lo4) | (((a[2] >> 6) & hi2) << 4);
    const __m128i sc = _mm_sub_epi8(_mm_set_epi32(int(s3), int(s2), int(s1), int(s0)), _mm_set1_epi8(32));
    const __m256i v16 = _mm256_cvtepi8_epi16(sc);
    for (int v = 0; v < 4; ++v) s.sv[v] = spread16(v16, 4 * v, 4 * v + 1, 4 * v + 2, 4 * v + 3);
    s.mv = v16;
    s.d = half(b + 108);
    s.dm = 4.0f * s.d;
  }
  template <int V>
  static __m512i codes(const uint8_t* b) {
    const __m512i lo = FQ2K::low2<V>(b + 32);
    // + 4 where bit 4 n + s of hmask[l] is set
    const __m512i hm = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)));
    constexpr int bit = 4 * (V / 2) + 2 * (V % 2);
    const __m512i sel = _mm512_inserti64x4(_mm512_set1_epi8(char(1 << bit)), _mm256_set1_epi8(char(1 << (bit + 1))), 1);
    return _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(hm, sel), lo, _mm512_set1_epi8(4));
  }
};

inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// y[i0 .. i0+MR) x rows [r0, r0+NR).
template <class F, int MR, int NR>
__attribute__((flatten)) void tile(const uint8_t* w, size_t row_bytes, int64_t r0, const KAct& a, int64_t i0,
                                   int64_t k, float* y, int64_t ldy) {
  __m512 f[MR][NR];
  __m256 fm[MR][NR];
  static_for<MR>([&](auto i) {
    static_for<NR>([&](auto j) { f[i][j] = _mm512_setzero_ps(), fm[i][j] = _mm256_setzero_ps(); });
  });
  const int64_t nb = k / 256;
  for (int64_t b = 0; b < nb; ++b) {
    static_for<NR>([&](auto j) {
      const uint8_t* blk = w + size_t(r0 + j) * row_bytes + size_t(b) * F::kBytes;
      _mm_prefetch(reinterpret_cast<const char*>(blk + 4 * F::kBytes), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(blk + 4 * F::kBytes + 64), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(blk + 4 * F::kBytes + 128), _MM_HINT_T0);
      BlockScales s;
      F::scales(blk, s);
      __m512i acc[MR];
      static_for<MR>([&](auto i) { acc[i] = _mm512_setzero_si512(); });
      static_for<4>([&](auto v) {
        const __m512i c = F::template codes<v>(blk);
        static_for<MR>([&](auto i) {
          const int8_t* xq = (F::kQ4Order ? a.qp : a.q) + (i0 + i) * k + b * 256 + 64 * v;
          const __m512i p = _mm512_maddubs_epi16(c, _mm512_loadu_si512(xq));
          acc[i] = _mm512_add_epi32(acc[i], _mm512_madd_epi16(p, s.sv[v]));
        });
      });
      static_for<MR>([&](auto i) {
        const float xs = a.xs[(i0 + i) * (k / 256) + b];
        f[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i]), _mm512_set1_ps(s.d * xs), f[i][j]);
        const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bsum + (i0 + i) * (k / 16) + b * 16));
        fm[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(s.mv, bs)), _mm256_set1_ps(s.dm * xs), fm[i][j]);
      });
    });
  }
  static_for<MR>([&](auto i) {
    static_for<NR>([&](auto j) { y[(i0 + i) * ldy + r0 + j] = _mm512_reduce_add_ps(f[i][j]) - hsum256(fm[i][j]); });
  });
}

template <class F>
void matmul_k(const float* x, int64_t m, const WeightMatrix& wm, float* y) {
  const int64_t n = wm.rows, k = wm.cols;
  if (m <= 0 || n <= 0) return;
  if (k % 256 != 0) fail("{} matmul: row length {} is not a multiple of 256", dtype_name(wm.dtype), k);
  const auto* w = static_cast<const uint8_t*>(wm.data);
  const size_t rb = size_t(k / 256) * F::kBytes;
  KAct& a = kact_scratch(m, k);
  auto quant = [&](int64_t i) {
    quantize_row(x + i * k, k, F::kQ4Order, a.q + i * k, a.qp + i * k, a.xs + i * (k / 256), a.bsum + i * (k / 16));
  };
  if (m == 1) quant(0);
#pragma omp parallel
  {
    if (m > 1) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < m; ++i) quant(i);
    }
    // Dynamic chunks of 32 rows (a descheduled thread's rows go to the others).
    constexpr int64_t kChunk = 32;
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < (n + kChunk - 1) / kChunk; ++c) {
      const int64_t n0 = c * kChunk, n1 = n0 + kChunk < n ? n0 + kChunk : n;
      if (m == 1) {
        for (int64_t r = n0; r < n1; r += 4) {
          const int64_t nr = n1 - r < 4 ? n1 - r : 4;
          if (nr == 4) tile<F, 1, 4>(w, rb, r, a, 0, k, y, n);
          else for (int64_t j = 0; j < nr; ++j) tile<F, 1, 1>(w, rb, r + j, a, 0, k, y, n);
        }
      } else {
        for (int64_t r = n0; r < n1; r += 2) {
          const bool two = n1 - r >= 2;
          for (int64_t i = 0; i < m; i += 4) {
            const int64_t mr = m - i < 4 ? m - i : 4;
            if (mr == 4) {
              if (two) tile<F, 4, 2>(w, rb, r, a, i, k, y, n);
              else tile<F, 4, 1>(w, rb, r, a, i, k, y, n);
            } else {
              for (int64_t ii = i; ii < i + mr; ++ii) {
                if (two) tile<F, 1, 2>(w, rb, r, a, ii, k, y, n);
                else tile<F, 1, 1>(w, rb, r, a, ii, k, y, n);
              }
            }
          }
        }
      }
    }
  }
}

}  // namespace

void matmul_q4_k(const float* x, int64_t m, const WeightMatrix& w, float* y) { matmul_k<FQ4K>(x, m, w, y); }
void matmul_q5_k(const float* x, int64_t m, const WeightMatrix& w, float* y) { matmul_k<FQ5K>(x, m, w, y); }
void matmul_q6_k(const float* x, int64_t m, const WeightMatrix& w, float* y) { matmul_k<FQ6K>(x, m, w, y); }
void matmul_q2_k(const float* x, int64_t m, const WeightMatrix& w, float* y) { matmul_k<FQ2K>(x, m, w, y); }
void matmul_q3_k(const float* x, int64_t m, const WeightMatrix& w, float* y) { matmul_k<FQ3K>(x, m, w, y); }

}  // namespace anybit::avx512
