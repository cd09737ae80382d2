// Repacking of QuantizedWeight into the int8 kernel layout, the lazily built PackSet,
// and the scalar activation quantization (see qbits_pack.h).
#include "kernels/qbits_pack.h"

#include <atomic>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"

namespace anybit::qbits {

AlignedBytes::AlignedBytes(size_t n) : n_(n) {
  const size_t bytes = (n + 63) / 64 * 64;
  p_ = static_cast<uint8_t*>(std::aligned_alloc(64, bytes ? bytes : 64));
  if (!p_) fail("out of memory allocating {} bytes for a packed weight", n);
  std::memset(p_, 0, bytes ? bytes : 64);
}

AlignedBytes& AlignedBytes::operator=(AlignedBytes&& o) noexcept {
  if (this != &o) {
    std::free(p_);
    p_ = o.p_, n_ = o.n_;
    o.p_ = nullptr, o.n_ = 0;
  }
  return *this;
}

namespace {

void validate(const QuantizedWeight& w) {
  if (w.bits < 2 || w.bits > 8) fail("quantized weight: bits {} is outside 2..8", w.bits);
  if (w.group != 32 && w.group != 64 && w.group != 128)
    fail("quantized weight: group {} is not 32, 64 or 128", w.group);
  if (w.rows <= 0 || w.cols <= 0 || w.cols % w.group != 0)
    fail("quantized weight: shape [{}, {}] does not fit group {}", w.rows, w.cols, w.group);
  if (w.act_bits != 0 && w.act_bits != 8) fail("quantized weight: act_bits {} is not 0 or 8", w.act_bits);
  const size_t ng = size_t(w.rows) * size_t(w.groups_per_row());
  if (w.codes.size() != size_t(w.rows) * w.row_code_bytes())
    fail("quantized weight: {} code bytes, expected {}", w.codes.size(), size_t(w.rows) * w.row_code_bytes());
  if (w.scales.size() != ng) fail("quantized weight: {} scales, expected {}", w.scales.size(), ng);
  if (w.asymmetric && w.zeros.size() != ng) fail("quantized weight: {} zeros, expected {}", w.zeros.size(), ng);
  if (!w.input_scale.empty() && w.input_scale.size() != size_t(w.cols))
    fail("quantized weight: {} input scales, expected {}", w.input_scale.size(), w.cols);
}

bool exact_f16(const std::vector<float>& v) {
  for (float f : v)
    if (!(f16_to_f32(f32_to_f16(f)) == f)) return false;
  return true;
}

}  // namespace

void unpack_row_codes(const QuantizedWeight& w, int64_t r, uint32_t* out) {
  // 8 consecutive codes occupy exactly `bits` whole bytes (cols is a multiple of 32).
  const uint8_t* row = w.codes.data() + size_t(r) * w.row_code_bytes();
  const uint64_t mask = (uint64_t(1) << w.bits) - 1;
  for (int64_t c = 0; c < w.cols; c += 8, row += w.bits) {
    uint64_t v = 0;
    std::memcpy(&v, row, size_t(w.bits));
    for (int j = 0; j < 8; ++j) out[c + j] = uint32_t((v >> (j * w.bits)) & mask);
  }
}

namespace {

std::mutex& pack_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace

PackSet& pack_set(const QuantizedWeight& cw) {
  // `packed` is the kernels' cache inside an otherwise immutable weight: published once
  // under a lock, then read lock-free after an acquire load of packed_kind.
  auto& w = const_cast<QuantizedWeight&>(cw);
  std::atomic_ref<int> kind(w.packed_kind);
  if (kind.load(std::memory_order_acquire) == kCpuPacks) return *static_cast<PackSet*>(w.packed.get());
  std::lock_guard<std::mutex> lock(pack_mutex());
  if (kind.load(std::memory_order_relaxed) == kCpuPacks) return *static_cast<PackSet*>(w.packed.get());
  if (kind.load(std::memory_order_relaxed) != 0)
    fail("quantized weight: already packed by another backend (kind {})", w.packed_kind);
  validate(w);
  auto set = std::make_shared<PackSet>();
  if (!w.input_scale.empty()) {
    set->inv_input_scale.resize(w.input_scale.size());
    for (size_t i = 0; i < w.input_scale.size(); ++i) {
      if (!(w.input_scale[i] != 0.0f) || !std::isfinite(w.input_scale[i]))
        fail("quantized weight: input_scale[{}] = {} is not a finite non-zero value", i, w.input_scale[i]);
      set->inv_input_scale[i] = 1.0f / w.input_scale[i];
    }
  }
  w.packed = set;
  kind.store(kCpuPacks, std::memory_order_release);
  return *set;
}

const VnniPack& int8_pack(const QuantizedWeight& w) {
  PackSet& s = pack_set(w);
  std::call_once(s.int8_once, [&] { s.int8 = build_int8_pack(w); });
  return *s.int8;
}

std::unique_ptr<VnniPack> build_int8_pack(const QuantizedWeight& w) {
  validate(w);
  auto p = std::make_unique<VnniPack>();
  p->bits = w.bits, p->group = w.group, p->asym = w.asymmetric;
  p->rows = w.rows, p->cols = w.cols;
  p->nrb = (w.rows + 15) / 16;
  p->ngroups = w.groups_per_row();
  p->f32_meta = !exact_f16(w.scales) || (w.asymmetric && !exact_f16(w.zeros));
  p->unit_bytes = size_t(64) * size_t(w.bits);
  p->code_bytes = size_t(w.cols / 32) * p->unit_bytes;
  const size_t meta = size_t(p->ngroups) * (w.asymmetric ? 2 : 1) * (p->f32_meta ? 64 : 32);
  p->meta_bytes = (meta + 63) / 64 * 64;
  p->rb_stride = p->code_bytes + p->meta_bytes;
  p->data = AlignedBytes(p->rb_stride * size_t(p->nrb));

  const int bits = w.bits;
  const bool p4 = bits >= 4 && bits < 8;
  const bool p2 = bits != 8 && bits - (p4 ? 4 : 0) >= 2;
  const bool p1 = bits != 8 && bits - (p4 ? 4 : 0) - (p2 ? 2 : 0) == 1;
  const int sh2 = p4 ? 4 : 0, sh1 = sh2 + (p2 ? 2 : 0);
  const size_t off2 = p4 ? 4 * 64 : 0, off1 = off2 + (p2 ? 2 * 64 : 0);
  const int64_t units = w.cols / 32;
  VnniPack& P = *p;
#pragma omp parallel
  {
    std::vector<uint32_t> row_codes(static_cast<size_t>(w.cols));
#pragma omp for schedule(dynamic, 16)
    for (int64_t rb = 0; rb < P.nrb; ++rb) {
      uint8_t* blk = P.data.data() + size_t(rb) * P.rb_stride;
      for (int rr = 0; rr < 16 && rb * 16 + rr < w.rows; ++rr) {
        const int64_t r = rb * 16 + rr;
        unpack_row_codes(w, r, row_codes.data());
        for (int64_t u = 0; u < units; ++u) {
          uint8_t* ub = blk + size_t(u) * P.unit_bytes;
          for (int ch = 0; ch < 8; ++ch)
            for (int t = 0; t < 4; ++t) {
              const uint32_t code = row_codes[size_t(u * 32 + ch * 4 + t)];
              const int byte = rr * 4 + t;
              if (bits == 8) {
                ub[ch * 64 + byte] = uint8_t(code);
                continue;
              }
              if (p4) ub[(ch / 2) * 64 + byte] |= uint8_t((code & 15) << (4 * (ch % 2)));
              if (p2) ub[off2 + (ch / 4) * 64 + byte] |= uint8_t(((code >> sh2) & 3) << (2 * (ch % 4)));
              if (p1) ub[off1 + byte] |= uint8_t(((code >> sh1) & 1) << ch);
            }
        }
        const size_t vb = P.f32_meta ? 4 : 2;
        auto put = [&](uint8_t* dst, float v) {
          if (P.f32_meta) {
            std::memcpy(dst, &v, 4);
          } else {
            const uint16_t h = f32_to_f16(v);
            std::memcpy(dst, &h, 2);
          }
        };
        for (int64_t g = 0; g < P.ngroups; ++g) {
          uint8_t* m = const_cast<uint8_t*>(P.meta(rb, g));
          const size_t gi = size_t(r * P.ngroups + g);
          put(m + size_t(rr) * vb, w.scales[gi]);
          if (w.asymmetric) put(m + 16 * vb + size_t(rr) * vb, w.zeros[gi]);
        }
      }
    }
  }
  return p;
}

ActQ& act_scratch(int64_t m, int64_t k, int64_t ngroups) {
  struct Buf {
    AlignedBytes q;
    std::vector<float> xs, xsz;
    ActQ a;
  };
  static thread_local Buf b;
  const size_t qn = size_t(m) * size_t(k) + 64;  // +64: kernels may read a dword past a row end
  if (b.q.size() < qn) b.q = AlignedBytes(qn);
  const size_t gn = size_t(m) * size_t(ngroups);
  if (b.xs.size() < gn) b.xs.resize(gn), b.xsz.resize(gn);
  b.a = ActQ{m, k, ngroups, reinterpret_cast<int8_t*>(b.q.data()), b.xs.data(), b.xsz.data()};
  return b.a;
}

void quantize_acts_scalar(const float* x, int64_t m, int64_t k, int group, bool per_token,
                          const float* inv_input_scale, ActQ& out) {
  std::vector<float> v(static_cast<size_t>(k));
  const int64_t G = k / group;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t c = 0; c < k; ++c) v[size_t(c)] = inv_input_scale ? x[i * k + c] * inv_input_scale[c] : x[i * k + c];
    float tok_amax = 0.0f;
    if (per_token)
      for (int64_t c = 0; c < k; ++c) tok_amax = std::fmax(tok_amax, std::fabs(v[size_t(c)]));
    for (int64_t g = 0; g < G; ++g) {
      float amax = tok_amax;
      if (!per_token)
        for (int64_t c = g * group; c < (g + 1) * group; ++c) amax = std::fmax(amax, std::fabs(v[size_t(c)]));
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      int32_t sum = 0;
      for (int64_t c = g * group; c < (g + 1) * group; ++c) {
        const float q = std::nearbyint(v[size_t(c)] * inv);
        const int8_t qi = int8_t(q > 127.0f ? 127 : q < -127.0f ? -127 : int(q));
        out.q[i * k + c] = qi;
        sum += qi;
      }
      const float xs = amax / 127.0f;
      out.xs[i * G + g] = xs;
      out.xsz[i * G + g] = xs * float(sum);
    }
  }
}

}  // namespace anybit::qbits
