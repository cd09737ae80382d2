#include "quant/coordinate_descent.h"

#include <algorithm>
#include <cmath>

#include "quant/gptq.h"
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

int64_t cd_group_search(const float* w, int64_t rows, int64_t cols, int group, const GroupFormat& f, const float* h,
                        std::vector<GroupParams>& params, uint8_t* codes, int grid, float min_shrink) {
  const int64_t G = cols / group, n = group;
  const int qmax = f.qmax();
  int64_t changed = 0;
#pragma omp parallel reduction(+ : changed)
  {
    std::vector<double> d(static_cast<size_t>(cols)), g(static_cast<size_t>(cols)), d0, g0, hg(size_t(n * n)),
        v(static_cast<size_t>(n));
    std::vector<uint8_t> q0(static_cast<size_t>(n)), best_q(static_cast<size_t>(n));
#pragma omp for schedule(dynamic, 4)
    for (int64_t r = 0; r < rows; ++r) {
      const float* wr = w + r * cols;
      uint8_t* q = codes + r * cols;
      GroupParams* pr = params.data() + r * G;
      auto value = [&](int64_t k, int c) {
        const GroupParams& p = pr[k / group];
        return p.scale * (float(c) - p.zero);
      };
      for (int64_t k = 0; k < cols; ++k) d[size_t(k)] = double(wr[k]) - double(value(k, q[k]));
      double e = 0.0;
      for (int64_t i = 0; i < cols; ++i) {
        const float* hi = h + i * cols;
        double s = 0.0;
        for (int64_t j = 0; j < cols; ++j) s += double(hi[j]) * d[size_t(j)];
        g[size_t(i)] = s;
        e += s * d[size_t(i)];
      }
      // Sets column k's code, keeping d, g and e = d^T H d exact.
      auto set_code = [&](int64_t k, int c) {
        const double dn = double(wr[k]) - double(value(k, c)), delta = dn - d[size_t(k)];
        if (delta == 0.0) return;
        e += 2.0 * delta * g[size_t(k)] + delta * delta * double(h[k * cols + k]);
        q[k] = uint8_t(c);
        d[size_t(k)] = dn;
        const float* hk = h + k * cols;
        for (int64_t j = 0; j < cols; ++j) g[size_t(j)] += delta * double(hk[j]);
      };
      for (int64_t gi = 0; gi < G; ++gi) {
        const int64_t c0 = gi * n;
        // v = w^_G + H_GG^-1 g_G, with a small ridge for dead or collinear inputs.
        double mean = 0.0;
        for (int64_t i = 0; i < n; ++i) mean += h[(c0 + i) * cols + c0 + i];
        mean = mean > 0.0 ? mean / double(n) : 1.0;
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t j = 0; j < n; ++j) hg[size_t(i * n + j)] = h[(c0 + i) * cols + c0 + j];
          hg[size_t(i * n + i)] += 1e-6 * mean;
          v[size_t(i)] = g[size_t(c0 + i)];
        }
        if (!cholesky_lower(hg, n)) continue;
        cholesky_solve(hg, v.data(), n);
        for (int64_t i = 0; i < n; ++i) v[size_t(i)] += double(value(c0 + i, q[c0 + i]));
        const GroupParams p_old = pr[gi];
        std::copy(q + c0, q + c0 + n, q0.begin());
        d0 = d, g0 = g;
        const double e_old = e;
        double best_e = e_old;
        GroupParams best_p = p_old;
        std::copy(q0.begin(), q0.end(), best_q.begin());
        double lo = v[0], hi = v[0], ext = v[0];
        for (int64_t i = 1; i < n; ++i) {
          lo = std::min(lo, v[size_t(i)]), hi = std::max(hi, v[size_t(i)]);
          if (std::fabs(v[size_t(i)]) > std::fabs(ext)) ext = v[size_t(i)];
        }
        for (int ci = 0; ci < std::max(1, grid); ++ci)
          for (int side = 0; side < (f.asym ? 1 : 2); ++side) {
            const double a = 1.0 - (1.0 - double(min_shrink)) * double(ci) / double(std::max(1, grid - 1));
            GroupParams p;
            if (f.asym) {
              const double mid = 0.5 * (lo + hi), l = mid - a * (mid - lo), u = mid + a * (hi - mid);
              p.scale = round_meta(float((u - l) / double(qmax)), f.meta);
              if (p.scale == 0.0f) continue;
              p.zero = round_meta(float(-l / double(p.scale)), f.meta);
            } else {
              p.zero = f.sym_zero();
              p.scale = round_meta(float(a * ext / (side == 0 ? -double(f.sym_zero()) : double(f.sym_zero()) - 1.0)), f.meta);
              if (p.scale == 0.0f) continue;
            }
            if (!std::isfinite(p.scale) || !std::isfinite(p.zero)) continue;
            pr[gi] = p;
            // Codes nearest v, then two sweeps inside the group against everything else.
            for (int64_t i = 0; i < n; ++i) {
              const double t = v[size_t(i)] / double(p.scale) + double(p.zero);
              set_code(c0 + i, int(std::lround(std::clamp(t, 0.0, double(qmax)))));
            }
            for (int sweep = 0; sweep < 2; ++sweep)
              for (int64_t k = c0; k < c0 + n; ++k) {
                const double hkk = h[k * cols + k];
                if (!(hkk > 0.0)) continue;
                const double target = double(value(k, q[k])) + g[size_t(k)] / hkk;
                const int c = int(std::lround(std::clamp(target / double(p.scale) + double(p.zero), 0.0, double(qmax))));
                if (c == q[k]) continue;
                const double before = e;
                const int old = q[k];
                set_code(k, c);
                if (!(e < before)) set_code(k, old);
              }
            if (e < best_e) {
              best_e = e;
              best_p = p;
              std::copy(q + c0, q + c0 + n, best_q.begin());
            }
            // Back to the state before this candidate.
            pr[gi] = p_old;
            std::copy(q0.begin(), q0.end(), q + c0);
            d = d0, g = g0, e = e_old;
          }
        if (best_e < e_old * (1.0 - 1e-9)) {
          pr[gi] = best_p;
          for (int64_t i = 0; i < n; ++i) set_code(c0 + i, best_q[size_t(i)]);
          // set_code skipped codes whose value did not change; make them equal anyway.
          std::copy(best_q.begin(), best_q.end(), q + c0);
          ++changed;
        }
      }
    }
  }
  return changed;
}

void cd_refine(const float* w, int64_t rows, int64_t cols, int group, const GroupFormat& f, const float* h,
               std::vector<GroupParams>& params, uint8_t* codes, int passes, int search_grid) {
  for (int pass = 0; pass < passes; ++pass) {
    const int64_t moved = cd_sweeps(w, rows, cols, group, f, h, params, codes, 1);
    const int64_t searched =
        search_grid > 0 ? cd_group_search(w, rows, cols, group, f, h, params, codes, search_grid) : 0;
    const int64_t refitted = refit_group_params(w, rows, cols, group, f, h, codes, params);
    if (moved == 0 && searched == 0 && refitted == 0) break;
  }
}

}  // namespace anybit::quant
