#include <cmath>

#include "kernels/rope.h"

namespace anybit {

std::vector<float> rope_inv_freq(const ModelConfig& cfg) {
  const int64_t half = cfg.head_dim / 2;
  std::vector<float> f(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    f[size_t(i)] = float(1.0 / std::pow(double(cfg.rope_theta), double(2 * i) / double(cfg.head_dim)));
  const RopeScaling& s = cfg.rope_scaling;
  if (s.kind == RopeScaling::Kind::Linear) {
    for (auto& x : f) x /= s.factor;
  } else if (s.kind == RopeScaling::Kind::Llama3) {
    // Long wavelengths are slowed down by `factor`, short ones kept, and the band
    // between is interpolated smoothly (Llama 3.1's scheme).
    const double old_ctx = double(s.original_max_position);
    const double low_wavelen = old_ctx / s.low_freq_factor;
    const double high_wavelen = old_ctx / s.high_freq_factor;
    for (auto& x : f) {
      const double wavelen = 2.0 * M_PI / double(x);
      if (wavelen > low_wavelen) {
        x = float(double(x) / s.factor);
      } else if (wavelen >= high_wavelen) {
        const double smooth = (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        x = float((1.0 - smooth) * double(x) / s.factor + smooth * double(x));
      }
    }
  }
  return f;
}

void rope_apply(float* x, int64_t n_tok, const int64_t* positions, int64_t n_heads, int64_t head_dim,
                const std::vector<float>& inv_freq) {
  const int64_t half = head_dim / 2;
#pragma omp parallel for schedule(static) if (n_tok > 4)
  for (int64_t t = 0; t < n_tok; ++t) {
    float cs[512], sn[512];
    for (int64_t i = 0; i < half; ++i) {
      // fp32 product like the reference implementation, then an exact cos/sin of it.
      const float angle = float(positions[t]) * inv_freq[size_t(i)];
      cs[i] = float(std::cos(double(angle)));
      sn[i] = float(std::sin(double(angle)));
    }
    float* row = x + t * n_heads * head_dim;
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = row + h * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * cs[i] - b * sn[i];
        v[i + half] = b * cs[i] + a * sn[i];
      }
    }
  }
}

}  // namespace anybit
