// AVX-512 matmul kernels: fp32 activations and accumulation for every weight dtype.
// The tiling driver is shared with AVX2 (matmul_tiles.h); this file supplies the
// 16-lane vector traits and the per-dtype weight decoders.
// GCC 12's AVX-512 intrinsics use _mm512_undefined_* internally and trip
// -Wuninitialized at every inlining site (GCC PR105593); the warnings are spurious.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "kernels/simd_kernels.h"

#define ANYBIT_SIMD_NS avx512
#include "kernels/matmul_tiles.h"

namespace anybit::avx512 {
namespace {

struct S {
  using V = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kParts = 2;
  // Dot scheme, m > 1: a 4x6 tile, 24 accumulators + 4 activation vectors + 1-2 weight
  // vectors in the 32 zmm registers; each converted weight vector feeds 4 FMAs.
  static constexpr int kMR = 4;
  static constexpr int kNR = 6;
  // m == 1: eight rows in flight, i.e. eight independent FMA chains and eight concurrent
  // memory streams per thread (fewer rows measured slower). Prefetching the same block
  // of the next tile's rows (kPrefetchDist < 0) keeps requests in flight across the
  // row (= 4 KiB page at K = 2048) boundaries.
  static constexpr int kNR1 = 8;
  static constexpr int kKU1 = 1;
  static constexpr int kPrefetchDist = -1;
  // xt scheme (m >= kXtMinM, K > 4096): 6 weight rows x 4 vectors of 16 activations.
  static constexpr int kNRW = 6;
  static constexpr int kMV = 4;
  static constexpr int kXtMinM = 16;

  static V zero() { return _mm512_setzero_ps(); }
  static V broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static float hsum(V v) { return _mm512_reduce_add_ps(v); }
  static void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

  // Copies one activation row into 32-element blocks (zero padded). With `permute`, each
  // block is stored as its 16 even elements then its 16 odd ones, matching WBf16 below.
  static void pack_a(const float* x, int64_t k, float* dst, bool permute) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    for (int64_t c = 0; c < k; c += 32, dst += 32) {
      const int64_t left = k - c;
      const __mmask16 m0 = left >= 16 ? 0xffff : __mmask16((1u << left) - 1);
      const __mmask16 m1 = left >= 32 ? 0xffff : left <= 16 ? 0 : __mmask16((1u << (left - 16)) - 1);
      const __m512 v0 = _mm512_maskz_loadu_ps(m0, x + c);
      const __m512 v1 = _mm512_maskz_loadu_ps(m1, x + c + 16);
      if (permute) {
        _mm512_storeu_ps(dst, _mm512_permutex2var_ps(v0, even, v1));
        _mm512_storeu_ps(dst + 16, _mm512_permutex2var_ps(v0, odd, v1));
      } else {
        _mm512_storeu_ps(dst, v0);
        _mm512_storeu_ps(dst + 16, v1);
      }
    }
  }
};

struct WF32 {
  static constexpr size_t kBlockBytes = 128, kElemBytes = 4;
  static constexpr bool kPermuteA = false;
  template <int P>
  static __m512 part(const uint8_t* b) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(b) + 16 * P);
  }
};

struct WF16 {
  static constexpr size_t kBlockBytes = 64, kElemBytes = 2;
  static constexpr bool kPermuteA = false;
  template <int P>
  static __m512 part(const uint8_t* b) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 32 * P)));
  }
};

// bf16 is the top half of an fp32: shifting each 32-bit lane left by 16 yields the even
// elements, masking off the low half yields the odd ones. One integer op per 16 weights,
// at the price of the even/odd reordering of the activations (pack_a).
struct WBf16 {
  static constexpr size_t kBlockBytes = 64, kElemBytes = 2;
  static constexpr bool kPermuteA = true;
  template <int P>
  static __m512 part(const uint8_t* b) {
    const __m512i raw = _mm512_loadu_si512(b);
    if constexpr (P == 0)
      return _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
    else
      return _mm512_castsi512_ps(_mm512_and_si512(raw, _mm512_set1_epi32(int(0xffff0000u))));
  }
};

inline __m512 block_scale(const uint8_t* b) {
  uint16_t d;
  std::memcpy(&d, b, 2);
  return _mm512_set1_ps(_cvtsh_ss(d));
}

struct WQ8 {
  static constexpr size_t kBlockBytes = 34, kElemBytes = 0;
  static constexpr bool kPermuteA = false;
  template <int P>
  static __m512 part(const uint8_t* b) {
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2 + 16 * P));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), block_scale(b));
  }
};

// Q4_0: byte j holds element j in its low nibble and element j + 16 in its high one.
struct WQ4 {
  static constexpr size_t kBlockBytes = 18, kElemBytes = 0;
  static constexpr bool kPermuteA = false;
  template <int P>
  static __m512 part(const uint8_t* b) {
    const __m512i bytes =
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2)));
    const __m512i nib = P == 0 ? _mm512_and_si512(bytes, _mm512_set1_epi32(15))
                               : _mm512_srli_epi32(bytes, 4);
    const __m512 q = _mm512_cvtepi32_ps(_mm512_sub_epi32(nib, _mm512_set1_epi32(8)));
    return _mm512_mul_ps(q, block_scale(b));
  }
};

}  // namespace

void matmul_f32(const float* x, int64_t m, const WeightMatrix& w, float* y) {
  matmul<S, WF32>(x, m, w, y);
}
void matmul_f16(const float* x, int64_t m, const WeightMatrix& w, float* y) {
  matmul<S, WF16>(x, m, w, y);
}
void matmul_bf16(const float* x, int64_t m, const WeightMatrix& w, float* y) {
  matmul<S, WBf16>(x, m, w, y);
}
void matmul_q8_0(const float* x, int64_t m, const WeightMatrix& w, float* y) {
  matmul<S, WQ8>(x, m, w, y);
}
void matmul_q4_0(const float* x, int64_t m, const WeightMatrix& w, float* y) {
  matmul<S, WQ4>(x, m, w, y);
}

}  // namespace anybit::avx512
