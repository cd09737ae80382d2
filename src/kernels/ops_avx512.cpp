// AVX-512 rmsnorm and silu_mul (fp32 activations).
// GCC 12's AVX-512 intrinsics use _mm512_undefined_* internally and trip
// -Wuninitialized at every inlining site (GCC PR105593); the warnings are spurious.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "kernels/simd_kernels.h"

namespace anybit::avx512 {
namespace {

// exp(x) for x <= 0. Range reduction x = n ln2 + r with |r| <= ln2/2 (ln2 split in two so
// n ln2 is exact for the n that occur), then the degree-7 Taylor polynomial of e^r, whose
// truncation error (r^8/8! < 6e-9) is below fp32 rounding. scalef applies 2^n and
// rounds gracefully into the subnormal range.
inline __m512 exp_nonpositive(__m512 x) {
  // Below -104 the result is under half the smallest subnormal: exactly 0.
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-104.0f), _CMP_GE_OQ);
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(live, p, n);
}

// silu(g) * u with the sigmoid computed from t = exp(-|g|), which never overflows:
// sigmoid(g) = 1 / (1 + t) for g >= 0 and t / (1 + t) for g < 0.
inline __m512 silu_mul_vec(__m512 g, __m512 u) {
  const __m512 t = exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(g)));
  const __mmask16 neg = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_LT_OQ);
  const __m512 num = _mm512_mask_blend_ps(neg, _mm512_set1_ps(1.0f), t);
  const __m512 sig = _mm512_div_ps(num, _mm512_add_ps(_mm512_set1_ps(1.0f), t));
  return _mm512_mul_ps(_mm512_mul_ps(g, sig), u);
}

inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
}

// Loads 16 (or `left` < 16, zero-filled) weights of a norm weight vector as fp32.
inline __m512 load_weight(const void* w, DType t, int64_t c, __mmask16 mask) {
  switch (t) {
    case DType::F16:
      return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(w) + c));
    case DType::BF16:
      return _mm512_castsi512_ps(_mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(w) + c)),
          16));
    default:
      return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(w) + c);
  }
}

struct FloatBuf {
  float* p = nullptr;
  ~FloatBuf() { std::free(p); }
};

}  // namespace

void rmsnorm(const float* x, const void* weight, DType wdtype, int64_t m, int64_t n, float eps,
             float* out) {
  // Block formats (unusual for norm weights) are expanded to fp32 once per call.
  FloatBuf expanded;
  if (wdtype != DType::F32 && wdtype != DType::F16 && wdtype != DType::BF16) {
    expanded.p = static_cast<float*>(std::malloc(size_t(n) * sizeof(float) + 64));
    dequantize_row(wdtype, weight, expanded.p, n);
    weight = expanded.p;
    wdtype = DType::F32;
  }
#pragma omp parallel for schedule(static) if (m * n >= (1 << 16))
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * n;
    float* oi = out + i * n;
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 32 <= n; c += 32) {
      const __m512 a = _mm512_loadu_ps(xi + c), b = _mm512_loadu_ps(xi + c + 16);
      s0 = _mm512_fmadd_ps(a, a, s0);
      s1 = _mm512_fmadd_ps(b, b, s1);
    }
    for (; c < n; c += 16) {
      const __m512 a = _mm512_maskz_loadu_ps(tail_mask(n - c), xi + c);
      s0 = _mm512_fmadd_ps(a, a, s0);
    }
    const double ss = double(_mm512_reduce_add_ps(_mm512_add_ps(s0, s1)));
    const __m512 inv = _mm512_set1_ps(float(1.0 / std::sqrt(ss / double(n) + double(eps))));
    for (c = 0; c < n; c += 16) {
      const __mmask16 mask = tail_mask(n - c);
      const __m512 a = _mm512_maskz_loadu_ps(mask, xi + c);
      _mm512_mask_storeu_ps(oi + c, mask,
                            _mm512_mul_ps(_mm512_mul_ps(a, inv), load_weight(weight, wdtype, c, mask)));
    }
  }
}

void silu_mul(const float* gate, const float* up, int64_t m, int64_t n, int64_t ld, float* out) {
#pragma omp parallel for schedule(static) if (m * n >= (1 << 16))
  for (int64_t i = 0; i < m; ++i) {
    const float* g = gate + i * ld;
    const float* u = up + i * ld;
    float* o = out + i * n;
    for (int64_t c = 0; c < n; c += 16) {
      const __mmask16 mask = tail_mask(n - c);
      const __m512 v = silu_mul_vec(_mm512_maskz_loadu_ps(mask, g + c), _mm512_maskz_loadu_ps(mask, u + c));
      _mm512_mask_storeu_ps(o + c, mask, v);
    }
  }
}

}  // namespace anybit::avx512
