// Random any-bit weights (declared in quant/random_qbits.h): used by the kernel selector's
// timing probe, the benchmarks and the random models of `anybit bench`.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "core/dtype.h"
#include "core/error.h"
#include "quant/random_qbits.h"

namespace anybit {

namespace {

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

std::shared_ptr<QuantizedWeight> make_random_qweight(int64_t rows, int64_t cols, int bits, int group,
                                                     bool asymmetric, uint64_t seed) {
  if (bits < 2 || bits > 8) fail("random qbits weight: bits {} is outside 2..8", bits);
  if ((group != 32 && group != 64 && group != 128) || cols % group != 0)
    fail("random qbits weight: group {} does not divide {} columns (32, 64 or 128)", group, cols);
  auto w = std::make_shared<QuantizedWeight>();
  w->bits = bits, w->group = group, w->asymmetric = asymmetric;
  w->rows = rows, w->cols = cols;
  w->quantizer = "random";
  w->codes.resize(size_t(rows) * w->row_code_bytes());
  uint64_t s = seed * 0x2545f4914f6cdd1dull + 1;
  for (size_t i = 0; i < w->codes.size(); i += 8) {
    const uint64_t v = splitmix(s);
    std::memcpy(w->codes.data() + i, &v, std::min<size_t>(8, w->codes.size() - i));
  }
  std::mt19937_64 rng(seed ^ 0xabcdef);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const float base = 0.02f / float(1 << (bits - 1));
  w->scales.resize(size_t(rows * w->groups_per_row()));
  for (auto& v : w->scales) v = f16_to_f32(f32_to_f16(base * (0.5f + std::fabs(nd(rng)))));
  if (asymmetric) {
    w->zeros.resize(w->scales.size());
    for (auto& z : w->zeros) z = float(rng() % (1u << bits));
  }
  return w;
}

}  // namespace anybit
