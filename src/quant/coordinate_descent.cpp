#include "quant/coordinate_descent.h"

#include <algorithm>
#include <cmath>

#include "quant/refine.h"

namespace anybit::quant {

int64_t cd_sweeps(const float* w, int64_t rows, int64_t cols, int group, const GroupFormat& f, const float* h,
                  const std::vector<GroupParams>& params, uint8_t* codes, int sweeps) {
  const int64_t G = cols / group;
  const int qmax = f.qmax();
  int64_t changed = 0;
#pragma omp parallel reduction(+ : changed)
  {
    // d = w - w^ and g = H d for the current row, in double so that the running product
    // does not drift over a sweep's updates.
    std::vector<double> d(static_cast<size_t>(cols)), g(static_cast<size_t>(cols));
#pragma omp for schedule(dynamic, 4)
    for (int64_t r = 0; r < rows; ++r) {
      const float* wr = w + r * cols;
      uint8_t* q = codes + r * cols;
      const GroupParams* pr = params.data() + r * G;
      // The value of code c in column k, as dequantize_codes computes it.
      auto value = [&](int64_t k, int c) {
        const GroupParams& p = pr[k / group];
        return p.scale * (float(c) - p.zero);
      };
      for (int64_t k = 0; k < cols; ++k) d[size_t(k)] = double(wr[k]) - double(value(k, q[k]));
      for (int64_t i = 0; i < cols; ++i) {
        const float* hi = h + i * cols;
        double s = 0.0;
        for (int64_t j = 0; j < cols; ++j) s += double(hi[j]) * d[size_t(j)];
        g[size_t(i)] = s;
      }
      for (int sweep = 0; sweep < sweeps; ++sweep) {
        int64_t row_changed = 0;
        for (int64_t k = 0; k < cols; ++k) {
          const double hkk = h[k * cols + k];
          const GroupParams& p = pr[k / group];
          if (!(hkk > 0.0) || p.scale == 0.0f) continue;
          // e_r as a function of d_k alone: hkk d_k^2 + 2 d_k c + const.
          const double dk = d[size_t(k)], c = g[size_t(k)] - hkk * dk;
          const double target = double(wr[k]) + c / hkk;  // w^_k*
          const int q0 = int(std::lround(std::clamp(target / double(p.scale) + double(p.zero), 0.0, double(qmax))));
          int best = q[k];
          double best_dn = dk, best_gain = 0.0;
          for (int cand = std::max(0, q0 - 1); cand <= std::min(qmax, q0 + 1); ++cand) {
            if (cand == q[k]) continue;
            const double dn = double(wr[k]) - double(value(k, cand));
            const double gain = hkk * (dn * dn - dk * dk) + 2.0 * (dn - dk) * c;  // change of e_r
            if (gain < best_gain) best = cand, best_dn = dn, best_gain = gain;
          }
          if (best == q[k]) continue;
          const double delta = best_dn - dk;
          q[k] = uint8_t(best);
          d[size_t(k)] = best_dn;
          const float* hk = h + k * cols;  // H symmetric: column k is row k
          for (int64_t j = 0; j < cols; ++j) g[size_t(j)] += delta * double(hk[j]);
          ++row_changed;
        }
        changed += row_changed;
        if (row_changed == 0) break;
      }
    }
  }
  return changed;
}

void cd_refine(const float* w, int64_t rows, int64_t cols, int group, const GroupFormat& f, const float* h,
               std::vector<GroupParams>& params, uint8_t* codes, int passes) {
  for (int pass = 0; pass < passes; ++pass) {
    const int64_t moved = cd_sweeps(w, rows, cols, group, f, h, params, codes, 1);
    const int64_t refitted = refit_group_params(w, rows, cols, group, f, h, codes, params);
    if (moved == 0 && refitted == 0) break;
  }
}

}  // namespace anybit::quant
