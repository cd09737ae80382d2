#include "quant/refine.h"

#include <algorithm>
#include <cmath>

#include "kernels/dispatch.h"
#include "quant/gptq.h"

namespace anybit::quant {

namespace {

// Solves the SPD system a x = b in place (a: n x n row-major, destroyed; x returned in
// b). False when a is not positive definite.
bool solve_spd(std::vector<double>& a, std::vector<double>& b, int64_t n) {
  if (!cholesky_lower(a, n)) return false;
  cholesky_solve(a, b.data(), n);
  return true;
}

}  // namespace

std::vector<double> row_output_errors(const float* w, const float* deq, int64_t rows, int64_t cols, const float* h) {
  std::vector<double> e(static_cast<size_t>(rows), 0.0);
  // delta · H through the matmul kernel (H symmetric), in row blocks to bound the scratch.
  const int64_t block = 256;
  std::vector<float> d(size_t(block * cols)), y(size_t(block * cols));
  for (int64_t r0 = 0; r0 < rows; r0 += block) {
    const int64_t m = std::min(block, rows - r0);
    for (int64_t i = 0; i < m * cols; ++i) d[size_t(i)] = w[r0 * cols + i] - deq[r0 * cols + i];
    matmul(d.data(), m, WeightMatrix{DType::F32, cols, cols, h}, y.data());
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < m; ++r) {
      double s = 0.0;
      for (int64_t c = 0; c < cols; ++c) s += double(d[size_t(r * cols + c)]) * double(y[size_t(r * cols + c)]);
      e[size_t(r0 + r)] = s;
    }
  }
  return e;
}

std::vector<float> dequantize_codes(const uint8_t* codes, const std::vector<GroupParams>& params, int64_t rows,
                                    int64_t cols, int group) {
  std::vector<float> out(size_t(rows * cols));
  const int64_t G = cols / group;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const GroupParams& p = params[size_t(r * G + c / group)];
      out[size_t(r * cols + c)] = p.scale * (float(codes[r * cols + c]) - p.zero);
    }
  return out;
}

int64_t refit_group_params(const float* w, int64_t rows, int64_t cols, int group, const GroupFormat& f,
                           const float* h, const uint8_t* codes, std::vector<GroupParams>& params) {
  const int64_t G = cols / group, per = f.asym ? 2 : 1, nb = G * per;
  int64_t changed = 0;
#pragma omp parallel reduction(+ : changed)
  {
    // Unknowns per group: the scale s (sym), or s and the offset m = -s * zero (asym), so
    // that value = s * b_s + m * b_m with b_s = code - zero_sym (sym) or code (asym), b_m = 1.
    const size_t un = size_t(nb);
    std::vector<double> hb(un * size_t(cols)), mat(un * un), a(un * un), v(un), x(un), th0(un), th(un),
        b(static_cast<size_t>(group));
#pragma omp for schedule(dynamic, 4)
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* q = codes + r * cols;
      const float* wr = w + r * cols;
      GroupParams* pr = params.data() + r * G;
      // hb_i = H b_i: basis i is non-zero only on its group's columns.
      for (int64_t i = 0; i < nb; ++i) {
        const int64_t c0 = (i / per) * group;
        const bool offset = i % per == 1;
        for (int64_t c = 0; c < group; ++c)
          b[size_t(c)] = offset ? 1.0 : double(q[c0 + c]) - (f.asym ? 0.0 : double(f.sym_zero()));
        double* out = hb.data() + i * cols;
        for (int64_t row = 0; row < cols; ++row) {
          const float* hr = h + row * cols + c0;
          double s = 0.0;
          for (int64_t c = 0; c < group; ++c) s += double(hr[c]) * b[size_t(c)];
          out[row] = s;
        }
      }
      // Normal equations M theta = v, M_ij = b_i^T H b_j, v_i = b_i^T H w.
      for (int64_t i = 0; i < nb; ++i) {
        const int64_t c0 = (i / per) * group;
        const bool offset = i % per == 1;
        for (int64_t j = 0; j < nb; ++j) {
          const double* hj = hb.data() + j * cols + c0;
          double s = 0.0;
          for (int64_t c = 0; c < group; ++c)
            s += hj[c] * (offset ? 1.0 : double(q[c0 + c]) - (f.asym ? 0.0 : double(f.sym_zero())));
          mat[size_t(i * nb + j)] = s;
        }
        const double* hi = hb.data() + i * cols;
        double s = 0.0;
        for (int64_t c = 0; c < cols; ++c) s += hi[c] * double(wr[c]);
        v[size_t(i)] = s;
      }
      for (int64_t g = 0; g < G; ++g) {
        th0[size_t(g * per)] = pr[g].scale;
        if (f.asym) th0[size_t(g * per + 1)] = -double(pr[g].scale) * double(pr[g].zero);
      }
      // A small pull toward the current parameters, relative to each diagonal: directions
      // the data do not determine (a group whose codes are all equal, dead inputs) stay
      // where they are instead of making the system singular.
      a = mat;
      for (int64_t i = 0; i < nb; ++i) {
        double& d = a[size_t(i * nb + i)];
        const double lam = d > 0.0 ? 1e-7 * d : 1.0;
        d += lam;
        x[size_t(i)] = v[size_t(i)] + lam * th0[size_t(i)];
      }
      if (!solve_spd(a, x, nb)) continue;
      // Rounded to the on-disk type, as the kernels will see it.
      std::vector<GroupParams> np(pr, pr + G);
      bool ok = true;
      for (int64_t g = 0; g < G && ok; ++g) {
        const float s = round_meta(float(x[size_t(g * per)]), f.meta);
        if (!std::isfinite(s) || s == 0.0f) continue;  // this group keeps its parameters
        np[size_t(g)].scale = s;
        if (f.asym) {
          const float z = round_meta(float(-x[size_t(g * per + 1)] / double(s)), f.meta);
          if (!std::isfinite(z)) ok = false;
          np[size_t(g)].zero = z;
        }
      }
      if (!ok) continue;
      for (int64_t g = 0; g < G; ++g) {
        th[size_t(g * per)] = np[size_t(g)].scale;
        if (f.asym) th[size_t(g * per + 1)] = -double(np[size_t(g)].scale) * double(np[size_t(g)].zero);
      }
      // e(theta) - w^T H w = theta^T M theta - 2 v^T theta: compare old and new exactly.
      auto quad = [&](const std::vector<double>& t) {
        double e = 0.0;
        for (int64_t i = 0; i < nb; ++i) {
          double s = 0.0;
          for (int64_t j = 0; j < nb; ++j) s += mat[size_t(i * nb + j)] * t[size_t(j)];
          e += t[size_t(i)] * (s - 2.0 * v[size_t(i)]);
        }
        return e;
      };
      if (quad(th) < quad(th0)) {
        std::copy(np.begin(), np.end(), pr);
        ++changed;
      }
    }
  }
  return changed;
}

}  // namespace anybit::quant
