// AVX2 + FMA + F16C matmul kernels: fp32 activations and accumulation for every weight
// dtype. The tiling driver is shared with AVX-512 (matmul_tiles.h); this file supplies
// the 8-lane vector traits and the per-dtype weight decoders.
#include <immintrin.h>

#include "kernels/simd_kernels.h"

#define ANYBIT_SIMD_NS avx2
#include "kernels/matmul_tiles.h"

namespace anybit::avx2 {
namespace {

struct S {
  using V = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kParts = 4;
  // 3x4 tile: 12 accumulators + 3 activation vectors + 1 weight vector = the 16 ymm
  // registers.
  static constexpr int kMR = 3;
  static constexpr int kNR = 4;
  static constexpr int kNR1 = 6;
  static constexpr int kKU1 = 1;
  static constexpr int kPrefetchDist = -1;

  // xt scheme (m >= kXtMinM, K > 4096): 4 weight rows x 3 vectors of 8 activations =
  // 12 accumulators + 3 activation vectors + 1 broadcast.
  static constexpr int kNRW = 4;
  static constexpr int kMV = 3;
  static constexpr int kXtMinM = 16;

  static V zero() { return _mm256_setzero_ps(); }
  static V broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static float hsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

  // Copies one activation row into 32-element blocks (zero padded). With `permute`, every
  // 16 elements are stored as their 8 even elements then their 8 odd ones, matching
  // WBf16 below.
  static void pack_a(const float* x, int64_t k, float* dst, bool permute) {
    const __m256i gather = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    for (int64_t c = 0; c < k; c += 32, dst += 32) {
      alignas(32) float blk[32];
      const float* src = x + c;
      if (k - c < 32) {
        std::memset(blk, 0, sizeof(blk));
        std::memcpy(blk, x + c, size_t(k - c) * sizeof(float));
        src = blk;
      }
      for (int h = 0; h < 32; h += 16) {
        const __m256 lo = _mm256_loadu_ps(src + h), hi = _mm256_loadu_ps(src + h + 8);
        if (permute) {
          // lo = x0..x7, hi = x8..x15 -> [x0 x2 x4 x6 | x1 x3 x5 x7] etc., then merge halves.
          const __m256 a = _mm256_permutevar8x32_ps(lo, gather);
          const __m256 b = _mm256_permutevar8x32_ps(hi, gather);
          _mm256_storeu_ps(dst + h, _mm256_permute2f128_ps(a, b, 0x20));
          _mm256_storeu_ps(dst + h + 8, _mm256_permute2f128_ps(a, b, 0x31));
        } else {
          _mm256_storeu_ps(dst + h, lo);
          _mm256_storeu_ps(dst + h + 8, hi);
        }
      }
    }
  }
};

struct WF32 {
  static constexpr size_t kBlockBytes = 128, kElemBytes = 4;
  static constexpr bool kPermuteA = false;
  template <int P>
  static __m256 part(const uint8_t* b) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(b) + 8 * P);
  }
};

struct WF16 {
  static constexpr size_t kBlockBytes = 64, kElemBytes = 2;
  static constexpr bool kPermuteA = false;
  template <int P>
  static __m256 part(const uint8_t* b) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16 * P)));
  }
};

// bf16 is the top half of an fp32: a left shift by 16 of each 32-bit lane yields the even
// elements of 16 weights, a mask of the low half the odd ones (see pack_a).
struct WBf16 {
  static constexpr size_t kBlockBytes = 64, kElemBytes = 2;
  static constexpr bool kPermuteA = true;
  template <int P>
  static __m256 part(const uint8_t* b) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 32 * (P / 2)));
    if constexpr (P % 2 == 0)
      return _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
    else
      return _mm256_castsi256_ps(_mm256_and_si256(raw, _mm256_set1_epi32(int(0xffff0000u))));
  }
};

inline __m256 block_scale(const uint8_t* b) {
  uint16_t d;
  std::memcpy(&d, b, 2);
  return _mm256_set1_ps(_cvtsh_ss(d));
}

struct WQ8 {
  static constexpr size_t kBlockBytes = 34, kElemBytes = 0;
  static constexpr bool kPermuteA = false;
  template <int P>
  static __m256 part(const uint8_t* b) {
    const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + 8 * P));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), block_scale(b));
  }
};

// Q4_0: byte j holds element j in its low nibble and element j + 16 in its high one.
struct WQ4 {
  static constexpr size_t kBlockBytes = 18, kElemBytes = 0;
  static constexpr bool kPermuteA = false;
  template <int P>
  static __m256 part(const uint8_t* b) {
    const __m256i bytes = _mm256_cvtepu8_epi32(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + 8 * (P % 2))));
    const __m256i nib = P < 2 ? _mm256_and_si256(bytes, _mm256_set1_epi32(15))
                              : _mm256_srli_epi32(bytes, 4);
    const __m256 q = _mm256_cvtepi32_ps(_mm256_sub_epi32(nib, _mm256_set1_epi32(8)));
    return _mm256_mul_ps(q, block_scale(b));
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

}  // namespace anybit::avx2
