// Random any-bit weights and references shared by the QBITS kernel tests.
#pragma once
#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "quant/quantized_weight.h"

namespace anybit::test {

inline uint64_t qbits_seed() {
  if (const char* s = std::getenv("ANYBIT_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  std::random_device rd;
  return (uint64_t(rd()) << 32) | rd();
}

struct QSpec {
  int bits = 4, group = 128;
  bool asym = false;
  int act_bits = 0;
  int64_t rows = 16, cols = 128;
  bool input_scale = false;
  bool f32_meta = false;  // scales (and zeros) not representable in f16
};

// Codes uniformly random, scales ~ |N(0, 0.02)| (rounded to f16 unless f32_meta),
// asymmetric zeros integers in [0, 2^bits) (fractional when f32_meta).
inline QuantizedWeight random_qweight(const QSpec& s, std::mt19937_64& rng) {
  QuantizedWeight w;
  w.bits = s.bits, w.group = s.group, w.asymmetric = s.asym, w.act_bits = s.act_bits;
  w.rows = s.rows, w.cols = s.cols;
  w.quantizer = "test";
  w.codes.resize(size_t(w.rows) * w.row_code_bytes());
  for (auto& b : w.codes) b = uint8_t(rng());
  std::normal_distribution<float> nd(0.0f, 0.02f);
  const size_t ng = size_t(w.rows * w.groups_per_row());
  w.scales.resize(ng);
  for (auto& v : w.scales) {
    v = std::fabs(nd(rng)) + 1e-4f;
    if (!s.f32_meta) v = f16_to_f32(f32_to_f16(v));
  }
  if (s.asym) {
    w.zeros.resize(ng);
    std::uniform_int_distribution<int> zd(0, (1 << s.bits) - 1);
    for (auto& z : w.zeros) z = float(zd(rng)) + (s.f32_meta ? 0.3183f : 0.0f);
  }
  if (s.input_scale) {
    std::uniform_real_distribution<float> ud(0.25f, 4.0f);
    w.input_scale.resize(size_t(w.cols));
    for (auto& v : w.input_scale) v = ud(rng);
  }
  return w;
}

// fp32 reference of the format: y = (x / input_scale) . dequant(W)^T in double.
inline std::vector<double> dequant_ref(const QuantizedWeight& w, const float* x, int64_t m) {
  std::vector<double> y(size_t(m * w.rows));
  std::vector<float> row(size_t(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    w.dequantize_row(r, row.data());
    for (int64_t i = 0; i < m; ++i) {
      double acc = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) {
        const double xv = w.input_scale.empty() ? double(x[i * w.cols + c])
                                                : double(x[i * w.cols + c]) / double(w.input_scale[size_t(c)]);
        acc += xv * double(row[size_t(c)]);
      }
      y[size_t(i * w.rows + r)] = acc;
    }
  }
  return y;
}

// Bound on |kernel - dequant_ref| for int8 activations: each activation is off by at most
// half its quantization step (amax / 254 of its group, or of its token with act_bits 8),
// times |w|; plus fp32 rounding of the group sums.
// step_divisor: 254 for the two-term activations (the residual's step is at most half a
// step of x, divided by 127 again).
inline std::vector<double> int8_act_bound(const QuantizedWeight& w, const float* x, int64_t m,
                                          double step_divisor = 1.0) {
  std::vector<double> tol(size_t(m * w.rows));
  const int64_t G = w.groups_per_row();
  std::vector<double> step(size_t(m * G));
  std::vector<double> absx(size_t(m * w.cols));
  for (int64_t i = 0; i < m; ++i) {
    double tok = 0.0;
    for (int64_t c = 0; c < w.cols; ++c) {
      const double xv = w.input_scale.empty() ? x[i * w.cols + c] : x[i * w.cols + c] / double(w.input_scale[size_t(c)]);
      absx[size_t(i * w.cols + c)] = std::fabs(xv);
      tok = std::fmax(tok, std::fabs(xv));
    }
    for (int64_t g = 0; g < G; ++g) {
      double amax = 0.0;
      for (int64_t c = g * w.group; c < (g + 1) * w.group; ++c) amax = std::fmax(amax, absx[size_t(i * w.cols + c)]);
      step[size_t(i * G + g)] = (w.act_bits == 8 ? tok : amax) / 127.0 / step_divisor;
    }
  }
  std::vector<float> row(size_t(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    w.dequantize_row(r, row.data());
    for (int64_t i = 0; i < m; ++i) {
      double t = 0.0, mag = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) {
        const double aw = std::fabs(double(row[size_t(c)]));
        t += 0.5 * step[size_t(i * G + c / w.group)] * 1.0001 * aw;
        mag += aw * absx[size_t(i * w.cols + c)];
      }
      tol[size_t(i * w.rows + r)] = t + 1e-5 * mag + 1e-30;
    }
  }
  return tol;
}

// |LUT result - fp32 result| bound: each table entry is off by at most ts/2 and a quad's
// planes weigh (2^bits - 1) in total; the zero-point term uses 2 * round(T[15]) per quad,
// off by at most ts, times |c_z|. Scaled by |s|; ts <= max over the group's quads of
// sum |x| / 2 / 127.
inline std::vector<double> lut_bound(const QuantizedWeight& w, const float* x, int64_t m) {
  const int64_t G = w.groups_per_row(), qpg = w.group / 4;
  std::vector<double> ts(size_t(m * G));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t g = 0; g < G; ++g) {
      double mx = 0.0;
      for (int64_t q = 0; q < qpg; ++q) {
        double s = 0.0;
        for (int t = 0; t < 4; ++t) {
          const int64_t c = g * w.group + q * 4 + t;
          s += std::fabs(w.input_scale.empty() ? x[i * w.cols + c] : x[i * w.cols + c] / w.input_scale[size_t(c)]);
        }
        mx = std::fmax(mx, s / 2.0);
      }
      ts[size_t(i * G + g)] = mx / 127.0 * 1.0001;
    }
  std::vector<double> tol(size_t(m * w.rows));
  const double half_range = ((1 << w.bits) - 1) * 0.5;
  for (int64_t r = 0; r < w.rows; ++r)
    for (int64_t i = 0; i < m; ++i) {
      double t = 0.0;
      for (int64_t g = 0; g < G; ++g) {
        const double cz = std::fabs(half_range - w.zero(r, g));
        t += w.scales[size_t(r * G + g)] * ts[size_t(i * G + g)] * double(qpg) * (half_range + cz);
      }
      tol[size_t(i * w.rows + r)] = t * 1.001 + 1e-6;
    }
  return tol;
}

}  // namespace anybit::test
