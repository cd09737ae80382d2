// End-to-end fine-tuning of quantization parameters: the fp32 forward/backward pass
// (quant/llama_grad.h) against finite differences and against the engine's forward, and
// the tuner (quant/finetune.h) lowering the held-out KL of a 2-bit model.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/error.h"
#include "quant/calibration.h"
#include "quant/finetune.h"
#include "quant/group_quant.h"
#include "quant/llama_grad.h"
#include "quant/objective.h"
#include "runtime/random_model.h"

#include "test_util.h"

using namespace anybit;
using namespace anybit::quant;

namespace {

using test::normal;
using test::rng;

std::vector<std::vector<int32_t>> random_windows(int64_t n, int64_t T, int64_t vocab) {
  std::uniform_int_distribution<int32_t> d(0, int32_t(vocab - 1));
  std::vector<std::vector<int32_t>> w(static_cast<size_t>(n), std::vector<int32_t>(static_cast<size_t>(T)));
  for (auto& x : w)
    for (auto& t : x) t = d(rng());
  return w;
}

// A small random model held as fp32 vectors, with a GradModel pointing into them.
struct SmallModel {
  ModelConfig cfg;
  std::vector<float> embed, head, final_norm;
  std::vector<std::vector<float>> lin[kGradMatrices], attn_norm, mlp_norm;
  GradModel gm;

  SmallModel() {
    cfg.hidden = 32, cfg.n_layers = 2, cfg.n_heads = 4, cfg.n_kv_heads = 2, cfg.head_dim = 8, cfg.ffn = 48;
    cfg.vocab = 40, cfg.rms_eps = 1e-5f;
    const int64_t H = cfg.hidden, F = cfg.ffn, hd = cfg.head_dim;
    const int64_t rows[kGradMatrices] = {cfg.n_heads * hd, cfg.n_kv_heads * hd, cfg.n_kv_heads * hd, H, F, F, H};
    const int64_t cols[kGradMatrices] = {H, H, H, cfg.n_heads * hd, H, H, F};
    embed = normal(size_t(cfg.vocab * H), 1.0f);
    head = normal(size_t(cfg.vocab * H), 0.3f);
    final_norm = normal(size_t(H), 0.2f, 1.0f);
    gm.embed = embed.data();
    gm.lm_head = GradLinear{head.data(), nullptr, cfg.vocab, H};
    gm.final_norm = final_norm.data();
    gm.layers.resize(size_t(cfg.n_layers));
    for (int i = 0; i < kGradMatrices; ++i)
      for (int64_t l = 0; l < cfg.n_layers; ++l)
        lin[i].push_back(normal(size_t(rows[i] * cols[i]), 0.6f / std::sqrt(float(cols[i]))));
    for (int64_t l = 0; l < cfg.n_layers; ++l) {
      attn_norm.push_back(normal(size_t(H), 0.2f, 1.0f));
      mlp_norm.push_back(normal(size_t(H), 0.2f, 1.0f));
      GradLayer& g = gm.layers[size_t(l)];
      for (int i = 0; i < kGradMatrices; ++i) g.lin[i] = GradLinear{lin[i][size_t(l)].data(), nullptr, rows[i], cols[i]};
      g.attn_norm = attn_norm[size_t(l)].data();
      g.mlp_norm = mlp_norm[size_t(l)].data();
    }
  }
};

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += double(a[i]) * b[i];
  return s;
}

}  // namespace

// The analytic gradient of every weight and norm along a random direction equals the
// central finite difference of L = sum(R . logits).
TEST(QuantFinetune, GradientsMatchFiniteDifferences) {
  SmallModel sm;
  const auto windows = random_windows(2, 7, sm.cfg.vocab);
  std::vector<const std::vector<int32_t>*> batch{&windows[0], &windows[1]};
  LlamaGrad g(sm.cfg);
  std::vector<float> logits;
  g.forward(sm.gm, batch, true, logits);
  const std::vector<float> R = normal(logits.size(), 1.0f);
  ModelGrads grads;
  g.backward(sm.gm, R, grads);
  ASSERT_EQ(grads.layers.size(), size_t(sm.cfg.n_layers));

  LlamaGrad probe(sm.cfg);
  auto loss = [&] {
    std::vector<float> lg;
    probe.forward(sm.gm, batch, false, lg);
    return dot(R, lg);
  };
  auto check = [&](std::vector<float>& w, const std::vector<float>& grad, const std::string& what) {
    ASSERT_EQ(grad.size(), w.size()) << what;
    std::vector<float> dir = normal(w.size(), 1.0f);
    double wn = 0.0, dn = 0.0;
    for (size_t i = 0; i < w.size(); ++i) wn += double(w[i]) * w[i], dn += double(dir[i]) * dir[i];
    // A step of 1% of the weights: the fp32 forward's rounding stays well below the signal.
    const double h = 1e-2 * std::sqrt(wn / dn);
    const std::vector<float> w0 = w;
    for (size_t i = 0; i < w.size(); ++i) w[i] = float(w0[i] + h * dir[i]);
    const double lp = loss();
    for (size_t i = 0; i < w.size(); ++i) w[i] = float(w0[i] - h * dir[i]);
    const double lm = loss();
    w = w0;
    const double fd = (lp - lm) / (2.0 * h), an = dot(grad, dir);
    EXPECT_NEAR(fd, an, 2e-2 * std::fabs(an) + 1e-3) << what;
    EXPECT_GT(std::fabs(an), 1e-3) << what << ": a gradient this small checks nothing";
  };
  for (int64_t l = 0; l < sm.cfg.n_layers; ++l) {
    for (int i = 0; i < kGradMatrices; ++i)
      check(sm.lin[i][size_t(l)], grads.layers[size_t(l)].w[i], "layer " + std::to_string(l) + " matrix " + std::to_string(i));
    check(sm.attn_norm[size_t(l)], grads.layers[size_t(l)].attn_norm, "attn_norm " + std::to_string(l));
    check(sm.mlp_norm[size_t(l)], grads.layers[size_t(l)].mlp_norm, "mlp_norm " + std::to_string(l));
  }
  check(sm.final_norm, grads.final_norm, "final norm");
}

// The pass's forward scores windows like the engine (calibration_nll runs LlamaModel).
TEST(QuantFinetune, ForwardMatchesEngine) {
  const ModelConfig cfg = named_shape("tiny");
  ModelFiles files = make_random_model(cfg, DType::F32, 1234);
  const auto windows = random_windows(3, 24, cfg.vocab);
  const double engine = calibration_nll(cfg, files.weights, windows);

  auto f32 = [&](const std::string& n) { return static_cast<const float*>(files.weights->get(n).data); };
  GradModel gm;
  gm.embed = f32("model.embed_tokens.weight");
  const TensorView* h = files.weights->find("lm_head.weight");
  gm.lm_head = GradLinear{h ? static_cast<const float*>(h->data) : gm.embed, nullptr, cfg.vocab, cfg.hidden};
  gm.final_norm = f32("model.norm.weight");
  const char* names[kGradMatrices] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                      "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  for (int64_t l = 0; l < cfg.n_layers; ++l) {
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    GradLayer g;
    for (int i = 0; i < kGradMatrices; ++i) {
      const TensorView& t = files.weights->get(pre + names[i] + ".weight");
      g.lin[i] = GradLinear{static_cast<const float*>(t.data), nullptr, t.shape[0], t.shape[1]};
    }
    g.attn_norm = f32(pre + "input_layernorm.weight");
    g.mlp_norm = f32(pre + "post_attention_layernorm.weight");
    gm.layers.push_back(g);
  }
  std::vector<const std::vector<int32_t>*> batch;
  for (const auto& w : windows) batch.push_back(&w);
  LlamaGrad pass(cfg);
  std::vector<float> logits;
  pass.forward(gm, batch, false, logits);
  double nll = 0.0;
  int64_t n = 0;
  for (size_t b = 0; b < windows.size(); ++b)
    for (size_t t = 0; t + 1 < windows[b].size(); ++t) {
      const float* row = logits.data() + (int64_t(b) * 24 + int64_t(t)) * cfg.vocab;
      double mx = row[0], z = 0.0;
      for (int64_t v = 1; v < cfg.vocab; ++v) mx = std::max(mx, double(row[v]));
      for (int64_t v = 0; v < cfg.vocab; ++v) z += std::exp(double(row[v]) - mx);
      nll += mx + std::log(z) - row[windows[b][t + 1]];
      ++n;
    }
  nll /= double(n);
  EXPECT_NEAR(nll, engine, 1e-4 * std::fabs(engine));
}

// A 2-bit model whose group scales and zeros were knocked off the teacher's: the teacher's
// linear weights are exactly representable with the student's codes, so the tuner can
// find them again. It lowers the held-out KL, moves the scales and leaves the codes alone.
TEST(QuantFinetune, RecoversPerturbedScalesOfTwoBitModel) {
  ModelConfig cfg = named_shape("tiny");
  cfg.n_layers = 2, cfg.vocab = 512;
  ModelFiles files = make_random_model(cfg, DType::F32, uint64_t(rng()()));
  auto teacher = std::make_shared<TensorStore>();
  std::map<std::string, std::shared_ptr<QuantizedWeight>> q;
  for (const auto& [name, t] : files.weights->all()) {
    if (name.find("model.layers.") != 0 || t.shape.size() != 2) {
      teacher->add(t);
      continue;
    }
    MatrixOptions mo;
    mo.bits = 2, mo.group = 128, mo.asym = true;
    QuantizedWeight w = quantize_rtn(static_cast<const float*>(t.data), t.shape[0], t.shape[1], mo, nullptr);
    const std::vector<float> eff = effective_weight(w);
    std::vector<uint8_t> bytes(eff.size() * 4);
    std::memcpy(bytes.data(), eff.data(), bytes.size());
    TensorView v = t;
    v.data = teacher->own(std::move(bytes));
    teacher->add(v);
    std::normal_distribution<float> d(0.0f, 0.25f);
    for (auto& sc : w.scales) sc *= std::exp(d(rng()));
    for (auto& z : w.zeros) z += d(rng());
    q[name] = std::make_shared<QuantizedWeight>(std::move(w));
  }
  ASSERT_EQ(q.size(), size_t(2 * kGradMatrices));
  std::map<std::string, std::vector<uint8_t>> codes_before;
  for (const auto& [n, w] : q) codes_before[n] = w->codes;
  const std::vector<float> scales_before = q.begin()->second->scales;
  // Enough tokens per group parameter that the held-out windows see what training fixes.
  const auto windows = random_windows(26, 64, cfg.vocab);
  FinetuneOptions fo;
  fo.epochs = 8, fo.batch_windows = 4, fo.holdout_windows = 2, fo.progress = false;
  fo.lr = 1e-2, fo.zero_lr = 5e-2;  // the perturbation is large: steps of a few percent
  const FinetuneResult r = finetune_quantized(cfg, *teacher, q, FinetuneFixed{}, windows, fo);
  EXPECT_GT(r.kl_start, 0.0);
  EXPECT_LT(r.kl_best, 0.75 * r.kl_start) << "start " << r.kl_start;
  EXPECT_GT(r.best_epoch, 0);
  EXPECT_EQ(r.steps, 8 * 6);
  EXPECT_EQ(r.norms.size(), size_t(2 * cfg.n_layers + 1));
  EXPECT_NE(q.begin()->second->scales, scales_before);
  for (const auto& [n, w] : q) {
    EXPECT_EQ(w->codes, codes_before.at(n)) << n;
    for (float sc : w->scales) ASSERT_TRUE(std::isfinite(sc) && sc > 0.0f) << n;
  }
}

TEST(QuantFinetune, RejectsMissingMatricesAndTooFewWindows) {
  const ModelConfig cfg = named_shape("tiny");
  ModelFiles files = make_random_model(cfg, DType::F32, 5);
  std::map<std::string, std::shared_ptr<QuantizedWeight>> none;
  FinetuneOptions fo;
  fo.epochs = 1, fo.progress = false;
  EXPECT_THROW(finetune_quantized(cfg, *files.weights, none, FinetuneFixed{}, random_windows(4, 8, cfg.vocab), fo),
               Error);
  EXPECT_THROW(finetune_quantized(cfg, *files.weights, none, FinetuneFixed{}, random_windows(1, 8, cfg.vocab), fo),
               Error);
}
