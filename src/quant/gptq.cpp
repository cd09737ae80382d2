#include "quant/gptq.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "kernels/dispatch.h"
#include "quant/coordinate_descent.h"
#include "quant/refine.h"

namespace anybit::quant {

bool cholesky_lower(std::vector<double>& a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    double d = a[size_t(j * n + j)];
    for (int64_t k = 0; k < j; ++k) d -= a[size_t(j * n + k)] * a[size_t(j * n + k)];
    if (!(d > 0.0)) return false;
    const double ljj = std::sqrt(d);
    a[size_t(j * n + j)] = ljj;
#pragma omp parallel for schedule(static) if (n - j > 256)
    for (int64_t i = j + 1; i < n; ++i) {
      double s = a[size_t(i * n + j)];
      const double* ai = &a[size_t(i * n)];
      const double* aj = &a[size_t(j * n)];
      for (int64_t k = 0; k < j; ++k) s -= ai[k] * aj[k];
      a[size_t(i * n + j)] = s / ljj;
    }
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) a[size_t(i * n + j)] = 0.0;
  return true;
}

void cholesky_solve(const std::vector<double>& l, double* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {  // L y = b
    double s = b[i];
    for (int64_t k = 0; k < i; ++k) s -= l[size_t(i * n + k)] * b[k];
    b[i] = s / l[size_t(i * n + i)];
  }
  for (int64_t i = n; i-- > 0;) {  // L^T x = y
    double s = b[i];
    for (int64_t k = i + 1; k < n; ++k) s -= l[size_t(k * n + i)] * b[k];
    b[i] = s / l[size_t(i * n + i)];
  }
}

namespace {

// Upper factor U with U^T U = H^-1, from H (n x n). False if H is not PD.
bool inverse_upper_factor(std::vector<double> hmat, int64_t n, std::vector<float>& u) {
  if (!cholesky_lower(hmat, n)) return false;
  // Linv = L^-1 (lower), column by column.
  std::vector<double> linv(size_t(n * n), 0.0);
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t c = 0; c < n; ++c) {
    linv[size_t(c * n + c)] = 1.0 / hmat[size_t(c * n + c)];
    for (int64_t i = c + 1; i < n; ++i) {
      double s = 0.0;
      for (int64_t k = c; k < i; ++k) s += hmat[size_t(i * n + k)] * linv[size_t(k * n + c)];
      linv[size_t(i * n + c)] = -s / hmat[size_t(i * n + i)];
    }
  }
  // H^-1 = Linv^T Linv.
  std::vector<double> hinv(size_t(n * n));
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i; j < n; ++j) {
      double s = 0.0;
      for (int64_t k = j; k < n; ++k) s += linv[size_t(k * n + i)] * linv[size_t(k * n + j)];
      hinv[size_t(i * n + j)] = hinv[size_t(j * n + i)] = s;
    }
  if (!cholesky_lower(hinv, n)) return false;
  u.assign(size_t(n * n), 0.0f);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i; j < n; ++j) u[size_t(i * n + j)] = float(hinv[size_t(j * n + i)]);
  return true;
}

}  // namespace

QuantizedWeight quantize_gptq(const float* w_in, int64_t rows, int64_t cols, const MatrixOptions& o, const float* h,
                              const GptqOptions& g) {
  check_matrix_options(o, rows, cols, "gptq");
  if (!h) fail("gptq: needs calibration statistics (E[x x^T])");
  const int64_t k = cols, G = cols / o.group;
  const GroupFormat f = o.format();
  const bool static_groups = g.static_groups || g.act_order;
  int64_t block = std::max<int64_t>(o.group, (g.block / o.group) * o.group);

  // Column order: decreasing E[x_c^2] with act_order.
  std::vector<int64_t> perm(static_cast<size_t>(k));
  std::iota(perm.begin(), perm.end(), 0);
  if (g.act_order)
    std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return h[a * k + a] > h[b * k + b]; });

  std::vector<float> diag(static_cast<size_t>(k));
  double mean_diag = 0.0;
  for (int64_t c = 0; c < k; ++c) mean_diag += h[c * k + c];
  mean_diag /= double(k);
  if (!(mean_diag > 0.0)) mean_diag = 1.0;

  // W and H in processing order; dead inputs (zero variance) carry no information: their
  // weights are zeroed (any value gives the same output) and their diagonal set to 1.
  std::vector<float> w_perm(size_t(rows * k));
  std::vector<double> hp(size_t(k * k));
  for (int64_t i = 0; i < k; ++i) {
    const int64_t ci = perm[size_t(i)];
    const bool dead = !(h[ci * k + ci] > 0.0f);
    for (int64_t j = 0; j < k; ++j) hp[size_t(i * k + j)] = h[ci * k + perm[size_t(j)]];
    if (dead) hp[size_t(i * k + i)] = mean_diag;
    for (int64_t r = 0; r < rows; ++r) w_perm[size_t(r * k + i)] = dead ? 0.0f : w_in[r * k + ci];
  }
  for (int64_t c = 0; c < k; ++c) diag[size_t(c)] = std::max(h[c * k + c], 0.0f);

  std::vector<float> u;
  double damp = std::max(1e-6, double(g.damp)) * mean_diag;
  for (int attempt = 0;; ++attempt) {
    std::vector<double> hd = hp;
    for (int64_t i = 0; i < k; ++i) hd[size_t(i * k + i)] += damp;
    if (inverse_upper_factor(std::move(hd), k, u)) break;
    if (attempt == 6) fail("gptq: the calibration Hessian is not positive definite even with damping");
    damp *= 10.0;
  }

  QuantizedWeight qw = make_weight(o, rows, cols, "gptq");
  std::vector<GroupParams> params(size_t(rows * G));
  std::vector<uint8_t> codes(size_t(rows * k));  // original column order
  if (static_groups) {
    // Parameters from the original weights in original column order.
#pragma omp parallel
    {
      std::vector<uint8_t> tmp(size_t(o.group));
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t gi = 0; gi < G; ++gi) {
          const float* wg = w_in + r * k + gi * o.group;
          params[size_t(r * G + gi)] = o.search ? search_params(wg, diag.data() + gi * o.group, o.group, f, o.search_opts, tmp.data())
                                                : rtn_params(wg, o.group, f);
        }
    }
  }

  // One GPTQ rounding pass over a fresh copy of the permuted weights. With `fixed`, the
  // group parameters are taken as given; otherwise each group's are chosen when its first
  // column is reached (no permutation then), from the already-compensated weights.
  const float qmax = float(f.qmax());
  auto gptq_pass = [&](bool fixed, std::vector<GroupParams>& pp, std::vector<uint8_t>& cc) {
    std::vector<float> w = w_perm;
    std::vector<float> err(size_t(rows * block)), upd, ublk;
    for (int64_t i1 = 0; i1 < k; i1 += block) {
      const int64_t i2 = std::min(k, i1 + block), bsz = i2 - i1;
#pragma omp parallel
      {
        std::vector<uint8_t> tmp(size_t(o.group));
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
          float* wr = w.data() + r * k;
          for (int64_t j = i1; j < i2; ++j) {
            const int64_t c = perm[size_t(j)], gi = c / o.group;
            GroupParams& p = pp[size_t(r * G + gi)];
            if (!fixed && j % o.group == 0)  // no permutation: j == c, the group starts here
              p = o.search ? search_params(wr + j, diag.data() + j, o.group, f, o.search_opts, tmp.data())
                           : rtn_params(wr + j, o.group, f);
            const float inv = p.scale != 0.0f ? 1.0f / p.scale : 0.0f;
            float q = std::min(std::max(std::nearbyint(wr[j] * inv + p.zero), 0.0f), qmax);
            // Exact nearest level for the stored scale (as encode_group does).
            const float v0 = p.scale * (q - p.zero);
            if (q > 0 && std::fabs(wr[j] - p.scale * (q - 1 - p.zero)) < std::fabs(wr[j] - v0)) q -= 1;
            else if (q < qmax && std::fabs(wr[j] - p.scale * (q + 1 - p.zero)) < std::fabs(wr[j] - v0)) q += 1;
            cc[size_t(r * k + c)] = uint8_t(q);
            const float e = (wr[j] - p.scale * (q - p.zero)) / u[size_t(j * k + j)];
            err[size_t(r * block + (j - i1))] = e;
            const float* uj = u.data() + j * k;
            for (int64_t jj = j + 1; jj < i2; ++jj) wr[jj] -= e * uj[jj];
          }
        }
      }
      const int64_t rest = k - i2;
      if (rest == 0) continue;
      // W[:, i2:] -= Err · U[i1:i2, i2:], via the matmul kernel (y = x · M^T, M = U_blk^T).
      ublk.resize(size_t(rest * bsz));
      for (int64_t jj = 0; jj < rest; ++jj)
        for (int64_t b = 0; b < bsz; ++b) ublk[size_t(jj * bsz + b)] = u[size_t((i1 + b) * k + i2 + jj)];
      std::vector<float> e2(size_t(rows * bsz));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < bsz; ++b) e2[size_t(r * bsz + b)] = err[size_t(r * block + b)];
      upd.resize(size_t(rows * rest));
      matmul(e2.data(), rows, WeightMatrix{DType::F32, rest, bsz, ublk.data()}, upd.data());
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t jj = 0; jj < rest; ++jj) w[size_t(r * k + i2 + jj)] -= upd[size_t(r * rest + jj)];
    }
  };
  gptq_pass(static_groups, params, codes);

  // Refinement (refine.h): refit every row's group parameters for its codes under the full
  // H, then round again with GPTQ on the refitted grids; each row keeps whichever of the
  // three (old, refitted, re-rounded) has the lowest output error on the undamped H, so a
  // round never makes a row worse. Rows are independent in GPTQ, so per-row choice is exact.
  if (g.refine > 0) {
    std::vector<double> best = row_output_errors(w_in, dequantize_codes(codes.data(), params, rows, k, o.group).data(),
                                                 rows, k, h);
    for (int round = 0; round < g.refine; ++round) {
      std::vector<GroupParams> p2 = params;
      if (refit_group_params(w_in, rows, k, o.group, f, h, codes.data(), p2) == 0) break;
      std::vector<uint8_t> c2(codes.size());
      gptq_pass(true, p2, c2);
      const std::vector<double> ea = row_output_errors(
          w_in, dequantize_codes(codes.data(), p2, rows, k, o.group).data(), rows, k, h);
      const std::vector<double> eb =
          row_output_errors(w_in, dequantize_codes(c2.data(), p2, rows, k, o.group).data(), rows, k, h);
      double before = 0.0, after = 0.0;
      for (int64_t r = 0; r < rows; ++r) {
        before += best[size_t(r)];
        const bool take_b = eb[size_t(r)] < ea[size_t(r)];
        const double e = take_b ? eb[size_t(r)] : ea[size_t(r)];
        if (e < best[size_t(r)]) {
          best[size_t(r)] = e;
          std::copy(p2.begin() + r * G, p2.begin() + (r + 1) * G, params.begin() + r * G);
          if (take_b) std::copy(c2.begin() + r * k, c2.begin() + (r + 1) * k, codes.begin() + r * k);
        }
        after += best[size_t(r)];
      }
      if (!(after < before * (1.0 - 1e-4))) break;  // converged
    }
  }
  // Coordinate descent from GPTQ's codes: every column re-rounded against all the others,
  // alternating with the refit; neither step raises a row's error on the undamped H.
  if (g.cd_passes > 0) cd_refine(w_in, rows, k, o.group, f, h, params, codes.data(), g.cd_passes, g.cd_search_grid);

  for (int64_t r = 0; r < rows; ++r)
    for (int64_t gi = 0; gi < G; ++gi) store_group(qw, r, gi, params[size_t(r * G + gi)], codes.data() + r * k + gi * o.group);
  return qw;
}

}  // namespace anybit::quant
