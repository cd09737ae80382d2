// Residual-stream rotation before quantization (quant/rotate.h): the matrices are
// orthogonal, and the rotated tiny-llama computes the same function as the original.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "core/error.h"
#include "formats/model_loader.h"
#include "model/llama.h"
#include "quant/rotate.h"

using namespace anybit;

namespace {

const std::string kModel = std::string(ANYBIT_SOURCE_DIR) + "/models/tiny-llama";

double max_orthogonality_error(const std::vector<double>& q, int64_t n) {
  double e = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double d = 0;
      for (int64_t k = 0; k < n; ++k) d += q[size_t(i * n + k)] * q[size_t(j * n + k)];
      e = std::max(e, std::fabs(d - (i == j ? 1.0 : 0.0)));
    }
  return e;
}

}  // namespace

TEST(Rotate, MatricesAreOrthogonalAndDependOnTheSeed) {
  struct Case {
    int64_t n;
    const char* kind;
  };
  for (const Case& c : {Case{64, "hadamard"}, Case{384, "hadamard"}, Case{96, "hadamard"}, Case{100, "orthogonal"}}) {
    SCOPED_TRACE("n = " + std::to_string(c.n));
    std::string kind;
    const auto q = quant::random_rotation(c.n, 7, &kind);
    EXPECT_EQ(kind, c.kind);
    EXPECT_LT(max_orthogonality_error(q, c.n), 1e-12);
    if (kind == "hadamard")  // every entry +-1/sqrt(n): the rotation spreads each channel evenly
      for (double v : q) ASSERT_NEAR(std::fabs(v), 1.0 / std::sqrt(double(c.n)), 1e-15);
    EXPECT_NE(q, quant::random_rotation(c.n, 8));
    EXPECT_EQ(q, quant::random_rotation(c.n, 7));
  }
  EXPECT_THROW(quant::random_rotation(0, 1), Error);
}

TEST(Rotate, RotatedTinyLlamaComputesTheSameLogits) {
  ModelFiles orig = load_model_files(kModel);
  const ModelConfig cfg = orig.config;
  std::string desc;
  ModelFiles rot = quant::rotate_residual(load_model_files(kModel), 3, &desc);
  EXPECT_NE(desc.find("hadamard 384"), std::string::npos) << desc;
  // The norms are folded away; the matrices really changed.
  EXPECT_EQ(rot.weights->get("model.norm.weight").dtype, DType::F32);
  const TensorView& q0 = rot.weights->get("model.layers.0.self_attn.q_proj.weight");
  const TensorView& q0_orig = orig.weights->get("model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(q0.shape, q0_orig.shape);

  const std::vector<int32_t> tokens = orig.tokenizer.encode("The kernel reads each weight once per token, and the cache", true);
  ASSERT_GE(tokens.size(), size_t(8));
  auto logits = [&](const ModelFiles& f) {
    LlamaModel model(cfg, f.weights);
    KVCache kv(cfg, 16, 16);
    SequenceKV s;
    ForwardOutput out;
    model.forward({BatchEntry{&s, tokens.data(), int64_t(tokens.size()), true}}, kv, out);
    return out.logits;
  };
  const auto a = logits(orig), b = logits(rot);
  ASSERT_EQ(a.size(), b.size());
  double amax = 0, dmax = 0;
  for (size_t i = 0; i < a.size(); ++i) amax = std::max(amax, double(std::fabs(a[i]))), dmax = std::max(dmax, double(std::fabs(a[i] - b[i])));
  // Only rounding differs: the rotated embedding is stored in bf16 again (2^-9 relative).
  EXPECT_LT(dmax, 0.01 * amax) << "max |logit difference| " << dmax << " of max |logit| " << amax;
  // Greedy tokens agree (at most one near-tie may flip under that rounding).
  const int64_t V = cfg.vocab;
  int64_t rows = 0, differ = 0;
  for (size_t r = 0; r * size_t(V) < a.size(); ++r, ++rows) {
    const auto ia = std::max_element(a.begin() + long(r * V), a.begin() + long((r + 1) * V)) - a.begin();
    const auto ib = std::max_element(b.begin() + long(r * V), b.begin() + long((r + 1) * V)) - b.begin();
    differ += ia != ib;
  }
  EXPECT_EQ(rows, int64_t(tokens.size()));
  EXPECT_LE(differ, 1) << differ << " of " << rows << " greedy tokens differ";
}

TEST(Rotate, RefusesTiedEmbeddings) {
  ModelFiles m = load_model_files(kModel);
  m.config.tie_embeddings = true;
  EXPECT_THROW(quant::rotate_residual(std::move(m), 1), Error);
}
