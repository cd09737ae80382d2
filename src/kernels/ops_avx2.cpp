// AVX2 + FMA + F16C rmsnorm and silu_mul (fp32 activations).
#include <immintrin.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "kernels/simd_kernels.h"

namespace anybit::avx2 {
namespace {

// exp(x) for x <= 0: x = n ln2 + r, |r| <= ln2/2, degree-7 Taylor polynomial of e^r
// (truncation error < 6e-9, below fp32 rounding), 2^n built in the exponent field.
// Below -87 the result is flushed to 0 so that 2^n stays a normal number (the true value
// is under 1.7e-38; silu multiplies it by g, and g * 0 stays exact for huge |g|).
inline __m256 exp_nonpositive(__m256 x) {
  const __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_GE_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(live, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

// silu(g) * u with the sigmoid computed from t = exp(-|g|), which never overflows:
// sigmoid(g) = 1 / (1 + t) for g >= 0 and t / (1 + t) for g < 0.
inline __m256 silu_mul_vec(__m256 g, __m256 u) {
  const __m256 absg = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), g);
  const __m256 t = exp_nonpositive(_mm256_sub_ps(_mm256_setzero_ps(), absg));
  const __m256 neg = _mm256_cmp_ps(g, _mm256_setzero_ps(), _CMP_LT_OQ);
  const __m256 num = _mm256_blendv_ps(_mm256_set1_ps(1.0f), t, neg);
  const __m256 sig = _mm256_div_ps(num, _mm256_add_ps(_mm256_set1_ps(1.0f), t));
  return _mm256_mul_ps(_mm256_mul_ps(g, sig), u);
}

// Loads 8 weights of a norm weight vector as fp32.
inline __m256 load_weight(const void* w, DType t, int64_t c) {
  switch (t) {
    case DType::F16:
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + c)));
    case DType::BF16:
      return _mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + c))),
          16));
    default:
      return _mm256_loadu_ps(static_cast<const float*>(w) + c);
  }
}

struct FloatBuf {
  float* p = nullptr;
  ~FloatBuf() { std::free(p); }
};

}  // namespace

void rmsnorm(const float* x, const void* weight, DType wdtype, int64_t m, int64_t n, float eps,
             float* out) {
  // The weight vector is expanded to fp32 once when the scalar tail or a block format needs it.
  const bool vec_w = wdtype == DType::F32 || wdtype == DType::F16 || wdtype == DType::BF16;
  FloatBuf wf;
  if (!vec_w || n % 8 != 0) {
    wf.p = static_cast<float*>(std::malloc(size_t(n) * sizeof(float) + 64));
    dequantize_row(wdtype, weight, wf.p, n);
  }
  if (!vec_w) {
    weight = wf.p;
    wdtype = DType::F32;
  }
#pragma omp parallel for schedule(static) if (m * n >= (1 << 16))
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * n;
    float* oi = out + i * n;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 16 <= n; c += 16) {
      const __m256 a = _mm256_loadu_ps(xi + c), b = _mm256_loadu_ps(xi + c + 8);
      s0 = _mm256_fmadd_ps(a, a, s0);
      s1 = _mm256_fmadd_ps(b, b, s1);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, _mm256_add_ps(s0, s1));
    double ss = 0.0;
    for (float l : lanes) ss += double(l);
    for (; c < n; ++c) ss += double(xi[c]) * double(xi[c]);
    const float invs = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
    const __m256 inv = _mm256_set1_ps(invs);
    for (c = 0; c + 8 <= n; c += 8)
      _mm256_storeu_ps(oi + c, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xi + c), inv),
                                             load_weight(weight, wdtype, c)));
    for (; c < n; ++c) oi[c] = xi[c] * invs * wf.p[c];
  }
}

void silu_mul(const float* gate, const float* up, int64_t m, int64_t n, int64_t ld, float* out) {
#pragma omp parallel for schedule(static) if (m * n >= (1 << 16))
  for (int64_t i = 0; i < m; ++i) {
    const float* g = gate + i * ld;
    const float* u = up + i * ld;
    float* o = out + i * n;
    int64_t c = 0;
    for (; c + 8 <= n; c += 8)
      _mm256_storeu_ps(o + c, silu_mul_vec(_mm256_loadu_ps(g + c), _mm256_loadu_ps(u + c)));
    if (c < n) {
      alignas(32) float gt[8] = {}, ut[8] = {}, ot[8];
      std::memcpy(gt, g + c, size_t(n - c) * sizeof(float));
      std::memcpy(ut, u + c, size_t(n - c) * sizeof(float));
      _mm256_store_ps(ot, silu_mul_vec(_mm256_load_ps(gt), _mm256_load_ps(ut)));
      std::memcpy(o + c, ot, size_t(n - c) * sizeof(float));
    }
  }
}

}  // namespace anybit::avx2
