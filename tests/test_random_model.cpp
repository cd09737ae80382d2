// The random-weight models behind `anybit bench --shape` and `anybit convert --shape`:
// the same seed gives the same bytes whatever the thread count (the fill is parallel,
// one generator per chunk), different seeds differ, and the values have the intended
// distribution (normal, std 0.02; norm weights exactly 1).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "runtime/random_model.h"

namespace anybit {
namespace {

TEST(RandomModel, SameSeedSameBytesForAnyThreadCount) {
  ModelConfig c = named_shape("tiny");
  c.vocab = 8192;  // the embedding (2 Mi values) spans several fill chunks
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const ModelFiles one = make_random_model(c, DType::F16, 77);
  omp_set_num_threads(std::max(2, saved));
  const ModelFiles many = make_random_model(c, DType::F16, 77);
  const ModelFiles other = make_random_model(c, DType::F16, 78);
  omp_set_num_threads(saved);
  const TensorView& a = one.weights->get("model.embed_tokens.weight", {c.vocab, c.hidden});
  const TensorView& b = many.weights->get("model.embed_tokens.weight", {c.vocab, c.hidden});
  const TensorView& d = other.weights->get("model.embed_tokens.weight", {c.vocab, c.hidden});
  ASSERT_EQ(a.nbytes, b.nbytes);
  EXPECT_EQ(std::memcmp(a.data, b.data, a.nbytes), 0);
  EXPECT_NE(std::memcmp(a.data, d.data, a.nbytes), 0);

  // Normal with std 0.02: mean ~ 0, variance ~ 4e-4 over 2 Mi samples (f16 rounding is
  // far below these bounds); chunks must not repeat each other.
  std::vector<float> v(size_t(a.numel()));
  dequantize_row(a.dtype, a.data, v.data(), a.numel());
  double s = 0, s2 = 0;
  for (float x : v) s += x, s2 += double(x) * x;
  const double mean = s / double(v.size()), var = s2 / double(v.size()) - mean * mean;
  EXPECT_NEAR(mean, 0.0, 1e-4);
  EXPECT_NEAR(std::sqrt(var), 0.02, 2e-4);
  const size_t chunk = size_t(1) << 20;
  EXPECT_NE(std::memcmp(v.data(), v.data() + chunk, 4096 * sizeof(float)), 0);
  const TensorView& norm = one.weights->get("model.norm.weight", {c.hidden});
  std::vector<float> nv(size_t(c.hidden));
  dequantize_row(norm.dtype, norm.data, nv.data(), c.hidden);
  for (float x : nv) ASSERT_EQ(x, 1.0f);
}

}  // namespace
}  // namespace anybit
