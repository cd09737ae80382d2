#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/attention.h"

namespace anybit {

namespace {

inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

void attention_paged(const AttentionArgs& a, const KVCache& kv, const SequenceKV& seq) {
  const int64_t hd = kv.head_dim(), bs = kv.block_size();
  const int64_t group = a.n_heads / kv.n_kv_heads();
  const int64_t stride = a.n_heads * hd;
#pragma omp parallel
  {
    std::vector<float> acc(static_cast<size_t>(hd)), scores(static_cast<size_t>(bs));
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int64_t t = 0; t < a.n_q; ++t) {
      for (int64_t h = 0; h < a.n_heads; ++h) {
        const int64_t n_ctx = a.pos0 + t + 1;
        const int64_t start = a.window > 0 ? std::max<int64_t>(0, n_ctx - a.window) : 0;
        const float* q = a.q + t * stride + h * hd;
        const int64_t kvh = h / group;
        float m = -std::numeric_limits<float>::infinity(), l = 0.0f;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t b0 = start - start % bs; b0 < n_ctx; b0 += bs) {
          const int32_t block = seq.blocks[size_t(b0 / bs)];
          const float* kb = kv.k(block, a.layer, kvh);
          const float* vb = kv.v(block, a.layer, kvh);
          const int64_t lo = std::max(b0, start) - b0, hi = std::min(b0 + bs, n_ctx) - b0;
          float bmax = -std::numeric_limits<float>::infinity();
          for (int64_t j = lo; j < hi; ++j) {
            scores[size_t(j)] = dot(q, kb + j * hd, hd) * a.scale;
            bmax = std::max(bmax, scores[size_t(j)]);
          }
          if (bmax > m) {  // rescale what was accumulated under the old maximum
            const float r = std::exp(m - bmax);
            l *= r;
            for (int64_t d = 0; d < hd; ++d) acc[size_t(d)] *= r;
            m = bmax;
          }
          for (int64_t j = lo; j < hi; ++j) {
            const float e = std::exp(scores[size_t(j)] - m);
            l += e;
            const float* v = vb + j * hd;
#pragma omp simd
            for (int64_t d = 0; d < hd; ++d) acc[size_t(d)] += e * v[d];
          }
        }
        float* o = a.out + t * stride + h * hd;
        const float inv = 1.0f / l;
        for (int64_t d = 0; d < hd; ++d) o[d] = acc[size_t(d)] * inv;
      }
    }
  }
}

void attention_paged_reference(const AttentionArgs& a, const KVCache& kv, const SequenceKV& seq) {
  const int64_t hd = kv.head_dim(), bs = kv.block_size();
  const int64_t group = a.n_heads / kv.n_kv_heads();
  const int64_t stride = a.n_heads * hd;
  for (int64_t t = 0; t < a.n_q; ++t)
    for (int64_t h = 0; h < a.n_heads; ++h) {
      const int64_t n_ctx = a.pos0 + t + 1;
      const int64_t start = a.window > 0 ? std::max<int64_t>(0, n_ctx - a.window) : 0;
      const float* q = a.q + t * stride + h * hd;
      std::vector<double> s(size_t(n_ctx - start));
      double mx = -1e300;
      for (int64_t p = start; p < n_ctx; ++p) {
        const float* k = kv.k(seq.blocks[size_t(p / bs)], a.layer, h / group) + (p % bs) * hd;
        double d = 0;
        for (int64_t i = 0; i < hd; ++i) d += double(q[i]) * k[i];
        s[size_t(p - start)] = d * a.scale;
        mx = std::max(mx, s[size_t(p - start)]);
      }
      double sum = 0;
      for (auto& x : s) sum += (x = std::exp(x - mx));
      float* o = a.out + t * stride + h * hd;
      for (int64_t i = 0; i < hd; ++i) {
        double acc = 0;
        for (int64_t p = start; p < n_ctx; ++p)
          acc += s[size_t(p - start)] * kv.v(seq.blocks[size_t(p / bs)], a.layer, h / group)[(p % bs) * hd + i];
        o[i] = float(acc / sum);
      }
    }
}

}  // namespace anybit
