// LUT layout packing, activation tables and the bit-exact scalar reference (qbits_lut.h).
#include "kernels/qbits_lut.h"

#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"

namespace anybit::qbits {

namespace {

bool exact_f16(const std::vector<float>& v) {
  for (float f : v)
    if (!(f16_to_f32(f32_to_f16(f)) == f)) return false;
  return true;
}

}  // namespace

const LutPack& lut_pack(const QuantizedWeight& w) {
  PackSet& s = pack_set(w);
  std::call_once(s.lut_once, [&] { s.lut = build_lut_pack(w); });
  return *s.lut;
}

std::unique_ptr<LutPack> build_lut_pack(const QuantizedWeight& w) {
  pack_set(w);  // validates
  if (w.bits < 2 || w.bits > 4) fail("table-lookup kernels take 2..4-bit weights, not {}", w.bits);
  auto p = std::make_unique<LutPack>();
  p->bits = w.bits, p->group = w.group, p->asym = w.asymmetric;
  p->rows = w.rows, p->cols = w.cols;
  p->nrb = (w.rows + 31) / 32;
  p->ngroups = w.groups_per_row();
  p->nspans = w.cols / 16;
  p->f32_meta = !exact_f16(w.scales) || (w.asymmetric && !exact_f16(w.zeros));
  p->span_bytes = size_t(64) * size_t(w.bits);
  p->code_bytes = size_t(p->nspans) * p->span_bytes;
  const size_t meta = size_t(p->ngroups) * (w.asymmetric ? 2 : 1) * (p->f32_meta ? 128 : 64);
  p->meta_bytes = (meta + 63) / 64 * 64;
  p->rb_stride = p->code_bytes + p->meta_bytes;
  p->data = AlignedBytes(p->rb_stride * size_t(p->nrb));
  const LutPair* pairs = lut_pairs(w.bits);
  const int npairs = 2 * w.bits;
  LutPack& P = *p;
#pragma omp parallel
  {
    std::vector<uint32_t> codes(static_cast<size_t>(w.cols));
#pragma omp for schedule(dynamic, 8)
    for (int64_t rb = 0; rb < P.nrb; ++rb) {
      uint8_t* blk = P.data.data() + size_t(rb) * P.rb_stride;
      for (int rr = 0; rr < 32 && rb * 32 + rr < w.rows; ++rr) {
        const int64_t r = rb * 32 + rr;
        unpack_row_codes(w, r, codes.data());
        for (int64_t s = 0; s < P.nspans; ++s) {
          uint8_t* sb = blk + size_t(s) * P.span_bytes;
          for (int pi = 0; pi < npairs; ++pi)
            for (int e = 0; e < 2; ++e) {
              const LutLookup l = pairs[pi].e[e];
              uint32_t idx = 0;
              for (int t = 0; t < 4; ++t) idx |= ((codes[size_t(s * 16 + l.quad * 4 + t)] >> l.plane) & 1u) << t;
              sb[(pi / 2) * 64 + 2 * rr + e] |= uint8_t(idx << (4 * (pi % 2)));
            }
        }
        const size_t vb = P.f32_meta ? 4 : 2;
        for (int64_t g = 0; g < P.ngroups; ++g) {
          uint8_t* m = const_cast<uint8_t*>(P.meta(rb, g));
          const size_t gi = size_t(r * P.ngroups + g);
          auto put = [&](uint8_t* dst, float v) {
            if (P.f32_meta) {
              std::memcpy(dst, &v, 4);
            } else {
              const uint16_t h = f32_to_f16(v);
              std::memcpy(dst, &h, 2);
            }
          };
          put(m + size_t(rr) * vb, w.scales[gi]);
          if (w.asymmetric) put(m + 32 * vb + size_t(rr) * vb, w.zeros[gi]);
        }
      }
    }
  }
  return p;
}

LutActs& lut_act_scratch(int64_t m, int64_t nspans, int64_t ngroups) {
  struct Buf {
    AlignedBytes t;
    std::vector<float> ts, xq;
    LutActs a;
  };
  static thread_local Buf b;
  const size_t tn = size_t(m) * size_t(nspans) * 64;
  if (b.t.size() < tn) b.t = AlignedBytes(tn);
  const size_t gn = size_t(m) * size_t(ngroups);
  if (b.ts.size() < gn) b.ts.resize(gn), b.xq.resize(gn);
  b.a = LutActs{m, nspans, ngroups, reinterpret_cast<int8_t*>(b.t.data()), b.ts.data(), b.xq.data()};
  return b.a;
}

void build_lut_acts_scalar(const float* x, int64_t m, int64_t k, int group, const float* inv_input_scale,
                           LutActs& out) {
  const int64_t G = k / group, quads_per_group = group / 4;
  std::vector<float> T(size_t(quads_per_group) * 16);
  for (int64_t i = 0; i < m; ++i) {
    int8_t* tab = out.t + i * (k / 16) * 64;
    for (int64_t g = 0; g < G; ++g) {
      float qmax = 0.0f;
      for (int64_t qd = 0; qd < quads_per_group; ++qd) {
        const int64_t c0 = g * group + qd * 4;
        float h[4];
        for (int t = 0; t < 4; ++t) {
          const float xv = inv_input_scale ? x[i * k + c0 + t] * inv_input_scale[c0 + t] : x[i * k + c0 + t];
          h[t] = 0.5f * xv;
        }
        for (int e = 0; e < 16; ++e) {
          float v = (e & 1) ? h[0] : -h[0];
          v = v + ((e & 2) ? h[1] : -h[1]);
          v = v + ((e & 4) ? h[2] : -h[2]);
          v = v + ((e & 8) ? h[3] : -h[3]);
          T[size_t(qd * 16 + e)] = v;
          qmax = std::fmax(qmax, std::fabs(v));
        }
      }
      const float inv = qmax > 0.0f ? 127.0f / qmax : 0.0f;
      int32_t sum15 = 0;
      for (int64_t qd = 0; qd < quads_per_group; ++qd) {
        // Quad qd of group g is quad (g * quads_per_group + qd) of the row: span /4, slot %4.
        int8_t* dst = tab + (g * quads_per_group + qd) * 16;
        for (int e = 0; e < 16; ++e) {
          float q = std::nearbyint(T[size_t(qd * 16 + e)] * inv);
          q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
          dst[e] = int8_t(q);
        }
        sum15 += dst[15];
      }
      out.ts[i * G + g] = qmax / 127.0f;
      out.xq[i * G + g] = float(2 * sum15);
    }
  }
}

void matmul_lut_ref(const QuantizedWeight& w, const float* x, int64_t m, float* y) {
  const PackSet& set = pack_set(w);
  if (w.bits < 2 || w.bits > 4) fail("table-lookup kernels take 2..4-bit weights, not {}", w.bits);
  const int64_t k = w.cols, G = w.groups_per_row(), S = k / 16;
  std::vector<int8_t> t(size_t(m * S * 64));
  std::vector<float> ts(size_t(m * G)), xq(size_t(m * G));
  LutActs a{m, S, G, t.data(), ts.data(), xq.data()};
  build_lut_acts_scalar(x, m, k, w.group, set.inv_input_scale.empty() ? nullptr : set.inv_input_scale.data(), a);
  std::vector<uint32_t> codes(static_cast<size_t>(k));
  const float half_range = float((1 << w.bits) - 1) * 0.5f;
  for (int64_t r = 0; r < w.rows; ++r) {
    unpack_row_codes(w, r, codes.data());
    for (int64_t i = 0; i < m; ++i) {
      const int8_t* tab = a.tables(i);
      float f = 0.0f;
      for (int64_t g = 0; g < G; ++g) {
        int32_t acc = 0;
        for (int64_t c = g * w.group; c < (g + 1) * w.group; c += 4)
          for (int p = 0; p < w.bits; ++p) {
            uint32_t idx = 0;
            for (int tt = 0; tt < 4; ++tt) idx |= ((codes[size_t(c + tt)] >> p) & 1u) << tt;
            acc += (1 << p) * int32_t(tab[(c / 4) * 16 + idx]);
          }
        const float cz = half_range - w.zero(r, g);
        float tv = std::fma(cz, a.xq[i * G + g], float(acc));
        tv = tv * a.ts[i * G + g];
        f = std::fma(w.scales[size_t(r * G + g)], tv, f);
      }
      y[i * w.rows + r] = f;
    }
  }
}

}  // namespace anybit::qbits
