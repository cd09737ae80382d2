// Scalar reference of the integer any-bit kernels: the same int8 activation
// quantization, exact integer group dots and the same fp32 epilogue (fused multiply-adds
// in the same order), so a correct SIMD kernel matches it bit for bit.
#include <cmath>
#include <vector>

#include "kernels/qbits_kernels.h"
#include "kernels/qbits_pack.h"

namespace anybit::qbits {

void matmul_int8_ref(const QuantizedWeight& w, const float* x, int64_t m, float* y) {
  const PackSet& set = pack_set(w);
  const int64_t k = w.cols, G = w.groups_per_row();
  std::vector<int8_t> q(size_t(m * k));
  std::vector<float> xs(size_t(m * G)), xsz(size_t(m * G));
  ActQ a{m, k, G, q.data(), xs.data(), xsz.data()};
  quantize_acts_scalar(x, m, k, w.group, w.act_bits == 8,
                       set.inv_input_scale.empty() ? nullptr : set.inv_input_scale.data(), a);
  std::vector<int32_t> codes(static_cast<size_t>(k));
  for (int64_t r = 0; r < w.rows; ++r) {
    for (int64_t c = 0; c < k; ++c) codes[size_t(c)] = int32_t(w.code(r, c));
    for (int64_t i = 0; i < m; ++i) {
      float f = 0.0f;
      for (int64_t g = 0; g < G; ++g) {
        int32_t dot = 0;
        for (int64_t c = g * w.group; c < (g + 1) * w.group; ++c) dot += codes[size_t(c)] * int32_t(a.q[i * k + c]);
        float t = float(dot) * a.xs[i * G + g];
        t = std::fma(-w.zero(r, g), a.xsz[i * G + g], t);
        f = std::fma(w.scales[size_t(r * G + g)], t, f);
      }
      y[i * w.rows + r] = f;
    }
  }
}

}  // namespace anybit::qbits
