#include "quant/group_quant.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "quant/bitpack.h"

namespace anybit::quant {

float round_meta(float v, DType t) {
  switch (t) {
    case DType::F16: return f16_to_f32(f32_to_f16(v));
    case DType::BF16: return bf16_to_f32(f32_to_bf16(v));
    default: return v;
  }
}

void encode_group(const float* w, int64_t n, const GroupFormat& f, GroupParams p, uint8_t* q) {
  const float qmax = float(f.qmax());
  const float inv = p.scale != 0.0f ? 1.0f / p.scale : 0.0f;
  for (int64_t c = 0; c < n; ++c) {
    float v = std::nearbyint(w[c] * inv + p.zero);
    v = std::min(std::max(v, 0.0f), qmax);
    q[c] = uint8_t(v);
  }
  if (inv == 0.0f || !std::isfinite(inv)) return;
  // w*inv can round to the wrong side of a midpoint; one neighbour check makes the
  // choice exactly nearest for the stored scale.
  for (int64_t c = 0; c < n; ++c) {
    const float cur = std::fabs(w[c] - p.scale * (float(q[c]) - p.zero));
    if (q[c] > 0 && std::fabs(w[c] - p.scale * (float(q[c] - 1) - p.zero)) < cur) --q[c];
    else if (q[c] < qmax && std::fabs(w[c] - p.scale * (float(q[c] + 1) - p.zero)) < cur) ++q[c];
  }
}

double group_error(const float* w, const float* d, int64_t n, GroupParams p, const uint8_t* q) {
  double e = 0.0;
  for (int64_t c = 0; c < n; ++c) {
    const double r = double(w[c]) - double(p.scale * (float(q[c]) - p.zero));
    e += (d ? double(d[c]) : 1.0) * r * r;
  }
  return e;
}

GroupParams rtn_params(const float* w, int64_t n, const GroupFormat& f) {
  GroupParams p;
  if (!f.asym) {
    float ext = 0.0f;
    for (int64_t c = 0; c < n; ++c)
      if (std::fabs(w[c]) > std::fabs(ext)) ext = w[c];
    p.zero = f.sym_zero();
    p.scale = round_meta(ext / -f.sym_zero(), f.meta);
    return p;
  }
  float lo = w[0], hi = w[0];
  for (int64_t c = 1; c < n; ++c) lo = std::min(lo, w[c]), hi = std::max(hi, w[c]);
  if (hi == lo) {  // a constant group: widen to include 0 so that the value is representable
    lo = std::min(lo, 0.0f);
    hi = std::max(hi, 0.0f);
  }
  if (hi == lo) return p;  // all zero: scale 0
  p.scale = round_meta((hi - lo) / float(f.qmax()), f.meta);
  p.zero = round_meta(-lo / p.scale, f.meta);
  return p;
}

namespace {

// Least-squares refit for fixed codes: symmetric refits the scale alone (zero is fixed
// by the format), asymmetric refits value = s*q + m jointly, then zero = -m/s.
bool refit(const float* w, const float* d, int64_t n, const GroupFormat& f, const uint8_t* q, GroupParams& p) {
  if (!f.asym) {
    double num = 0.0, den = 0.0;
    for (int64_t c = 0; c < n; ++c) {
      const double dc = d ? double(d[c]) : 1.0, k = double(q[c]) - double(p.zero);
      num += dc * double(w[c]) * k;
      den += dc * k * k;
    }
    if (den <= 0.0) return false;
    p.scale = round_meta(float(num / den), f.meta);
    return true;
  }
  double sd = 0, sq = 0, sqq = 0, sw = 0, swq = 0;
  for (int64_t c = 0; c < n; ++c) {
    const double dc = d ? double(d[c]) : 1.0, k = double(q[c]);
    sd += dc, sq += dc * k, sqq += dc * k * k, sw += dc * double(w[c]), swq += dc * double(w[c]) * k;
  }
  const double det = sd * sqq - sq * sq;
  if (!(det > 1e-12 * sd * sqq)) return false;
  const double s = (sd * swq - sq * sw) / det, m = (sqq * sw - sq * swq) / det;
  if (s == 0.0 || !std::isfinite(s) || !std::isfinite(m)) return false;
  p.scale = round_meta(float(s), f.meta);
  if (p.scale == 0.0f) return false;
  p.zero = round_meta(float(-m / double(p.scale)), f.meta);
  return std::isfinite(p.zero);
}

}  // namespace

GroupParams search_params(const float* w, const float* d, int64_t n, const GroupFormat& f,
                          const SearchOptions& o, uint8_t* q) {
  std::vector<uint8_t> tmp(size_t(n), 0);
  GroupParams best = rtn_params(w, n, f);
  encode_group(w, n, f, best, q);
  double best_err = group_error(w, d, n, best, q);
  if (best.scale == 0.0f || best_err == 0.0) return best;

  auto consider = [&](GroupParams p) {
    if (!std::isfinite(p.scale) || !std::isfinite(p.zero)) return;
    encode_group(w, n, f, p, tmp.data());
    const double e = group_error(w, d, n, p, tmp.data());
    if (e < best_err) {
      best_err = e;
      best = p;
      std::copy(tmp.begin(), tmp.end(), q);
    }
  };

  const int grid = std::max(1, o.grid);
  if (!f.asym) {
    float ext = 0.0f;
    for (int64_t c = 0; c < n; ++c)
      if (std::fabs(w[c]) > std::fabs(ext)) ext = w[c];
    for (int i = 0; i < grid; ++i) {
      const float a = 1.0f - (1.0f - o.min_shrink) * float(i) / float(std::max(1, grid - 1));
      // Largest magnitude on the long (negative) side, or on the short positive side.
      consider({round_meta(a * ext / -f.sym_zero(), f.meta), f.sym_zero()});
      consider({round_meta(a * ext / (f.sym_zero() - 1.0f), f.meta), f.sym_zero()});
    }
  } else {
    float lo = w[0], hi = w[0];
    for (int64_t c = 1; c < n; ++c) lo = std::min(lo, w[c]), hi = std::max(hi, w[c]);
    const float mid = 0.5f * (lo + hi);
    for (int i = 1; i < grid; ++i) {
      const float a = 1.0f - (1.0f - o.min_shrink) * float(i) / float(std::max(1, grid - 1));
      const float l = mid - a * (mid - lo), h = mid + a * (hi - mid);
      GroupParams p;
      p.scale = round_meta((h - l) / float(f.qmax()), f.meta);
      if (p.scale == 0.0f) continue;
      p.zero = round_meta(-l / p.scale, f.meta);
      consider(p);
    }
  }
  for (int it = 0; it < o.refine_iters; ++it) {
    GroupParams p = best;
    if (!refit(w, d, n, f, q, p)) break;
    const double before = best_err;
    consider(p);
    if (best_err >= before) break;
  }
  return best;
}

int fitting_group(int group, int64_t cols) {
  for (int g : {128, 64, 32})
    if (g <= group && cols > 0 && cols % g == 0) return g;
  return 0;
}

void check_matrix_options(const MatrixOptions& o, int64_t rows, int64_t cols, const std::string& what) {
  if (o.bits < 2 || o.bits > 8) fail("{}: bits must be 2..8 (got {})", what, o.bits);
  if (o.group != 32 && o.group != 64 && o.group != 128) fail("{}: group must be 32, 64 or 128 (got {})", what, o.group);
  if (cols % o.group != 0) fail("{}: group {} does not divide the row length {}", what, o.group, cols);
  if (rows <= 0 || cols <= 0) fail("{}: empty matrix", what);
  if (o.act_bits != 0 && o.act_bits != 8) fail("{}: act_bits must be 0 or 8 (got {})", what, o.act_bits);
  if (o.meta != DType::F16 && o.meta != DType::BF16 && o.meta != DType::F32)
    fail("{}: scale dtype must be f16, bf16 or f32", what);
}

QuantizedWeight make_weight(const MatrixOptions& o, int64_t rows, int64_t cols, const std::string& quantizer) {
  QuantizedWeight qw;
  qw.bits = o.bits;
  qw.group = o.group;
  qw.asymmetric = o.asym;
  qw.act_bits = o.act_bits;
  qw.rows = rows;
  qw.cols = cols;
  qw.quantizer = quantizer;
  qw.codes.assign(size_t(rows) * qw.row_code_bytes(), 0);
  qw.scales.assign(size_t(rows * qw.groups_per_row()), 0.0f);
  if (o.asym) qw.zeros.assign(qw.scales.size(), 0.0f);
  return qw;
}

void store_group(QuantizedWeight& qw, int64_t r, int64_t g, GroupParams p, const uint8_t* codes) {
  const size_t gi = size_t(r * qw.groups_per_row() + g);
  qw.scales[gi] = p.scale;
  if (qw.asymmetric) qw.zeros[gi] = p.zero;
  // group * bits is a multiple of 8 (groups are multiples of 32), so groups own whole bytes.
  uint8_t* dst = qw.codes.data() + size_t(r) * qw.row_code_bytes() + size_t(g * qw.group * qw.bits / 8);
  pack_codes(codes, qw.group, qw.bits, dst);
}

QuantizedWeight quantize_rtn(const float* w, int64_t rows, int64_t cols, const MatrixOptions& o,
                             const float* col_weight) {
  check_matrix_options(o, rows, cols, "quantize");
  QuantizedWeight qw = make_weight(o, rows, cols, o.search ? "rtn-clip" : "rtn");
  const GroupFormat f = o.format();
  const int64_t G = cols / o.group;
#pragma omp parallel
  {
    std::vector<uint8_t> codes(size_t(o.group));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t g = 0; g < G; ++g) {
        const float* wg = w + r * cols + g * o.group;
        const float* dg = col_weight ? col_weight + g * o.group : nullptr;
        GroupParams p;
        if (o.search) {
          p = search_params(wg, dg, o.group, f, o.search_opts, codes.data());
        } else {
          p = rtn_params(wg, o.group, f);
          encode_group(wg, o.group, f, p, codes.data());
        }
        store_group(qw, r, g, p, codes.data());
      }
  }
  return qw;
}

std::vector<float> dequantize(const QuantizedWeight& qw) {
  std::vector<float> out(size_t(qw.rows * qw.cols));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < qw.rows; ++r) qw.dequantize_row(r, out.data() + r * qw.cols);
  return out;
}

}  // namespace anybit::quant
