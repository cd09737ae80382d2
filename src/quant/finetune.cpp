#include "quant/finetune.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "core/error.h"
#include "core/progress.h"
#include "quant/group_quant.h"
#include "quant/llama_grad.h"

namespace anybit::quant {

namespace {

const char* const kMatrixNames[kGradMatrices] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                 "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                 "mlp.down_proj"};

struct Adam {
  std::vector<float> m, v;
  void init(size_t n) { m.assign(n, 0.0f), v.assign(n, 0.0f); }
  // One step on p for gradient g; t counts from 1.
  void step(std::vector<float>& p, const std::vector<float>& g, double lr, int t) {
    constexpr double b1 = 0.9, b2 = 0.99, eps = 1e-12;
    const double c1 = 1.0 - std::pow(b1, t), c2 = 1.0 - std::pow(b2, t);
#pragma omp parallel for schedule(static) if (p.size() > 4096)
    for (size_t i = 0; i < p.size(); ++i) {
      m[i] = float(b1 * m[i] + (1.0 - b1) * g[i]);
      v[i] = float(b2 * v[i] + (1.0 - b2) * double(g[i]) * g[i]);
      p[i] -= float(lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + eps));
    }
  }
};

// One quantized matrix: its codes are fixed, its group scales and zeros train.
struct TrainMatrix {
  QuantizedWeight* q = nullptr;
  std::vector<float> codes;     // rows x cols
  std::vector<float> s0, z0;    // per group, at the start
  std::vector<float> theta, phi;  // log-scale and zero offsets
  Adam at, az;
  std::vector<float> w;         // effective weight for the current parameters

  void init(QuantizedWeight& qw) {
    q = &qw;
    const int64_t R = qw.rows, C = qw.cols, G = qw.groups_per_row();
    codes.resize(size_t(R * C));
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) codes[size_t(r * C + c)] = float(qw.code(r, c));
    s0 = qw.scales;
    z0.resize(size_t(R * G));
    for (int64_t r = 0; r < R; ++r)
      for (int64_t g = 0; g < G; ++g) z0[size_t(r * G + g)] = qw.zero(r, g);
    theta.assign(s0.size(), 0.0f), at.init(s0.size());
    if (qw.asymmetric) phi.assign(z0.size(), 0.0f), az.init(z0.size());
    w.resize(codes.size());
  }
  float scale(size_t i) const { return s0[i] * std::exp(theta[i]); }
  float zero(size_t i) const { return phi.empty() ? z0[i] : z0[i] + phi[i]; }
  void rebuild() {
    const QuantizedWeight& qw = *q;
    const int64_t R = qw.rows, C = qw.cols, G = qw.groups_per_row(), gs = qw.group;
    const float* in = qw.input_scale.empty() ? nullptr : qw.input_scale.data();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t g = 0; g < G; ++g) {
        const size_t gi = size_t(r * G + g);
        const float s = scale(gi), z = zero(gi);
        for (int64_t c = g * gs; c < (g + 1) * gs; ++c) {
          float v = s * (codes[size_t(r * C + c)] - z);
          if (in) v /= in[c];
          w[size_t(r * C + c)] = v;
        }
      }
  }
  // Gradients of theta and phi from the gradient of the effective weight.
  void param_grads(const std::vector<float>& dw, std::vector<float>& gt, std::vector<float>& gz) const {
    const QuantizedWeight& qw = *q;
    const int64_t R = qw.rows, C = qw.cols, G = qw.groups_per_row(), gs = qw.group;
    const float* in = qw.input_scale.empty() ? nullptr : qw.input_scale.data();
    gt.assign(s0.size(), 0.0f);
    gz.assign(phi.size(), 0.0f);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t g = 0; g < G; ++g) {
        const size_t gi = size_t(r * G + g);
        const float s = scale(gi), z = zero(gi);
        double ds = 0.0, dsum = 0.0;
        for (int64_t c = g * gs; c < (g + 1) * gs; ++c) {
          const double d = in ? double(dw[size_t(r * C + c)]) / in[c] : double(dw[size_t(r * C + c)]);
          ds += d * (codes[size_t(r * C + c)] - z);
          dsum += d;
        }
        gt[gi] = float(ds * s);  // d/dtheta of s0 e^theta
        if (!gz.empty()) gz[gi] = float(-s * dsum);
      }
  }
};

struct TrainNorm {
  std::string name;
  std::vector<float> g0, psi, w;
  Adam a;
  void init(std::string n, std::vector<float> g) {
    name = std::move(n), g0 = std::move(g), psi.assign(g0.size(), 0.0f), a.init(g0.size()), w = g0;
  }
  void rebuild() {
    for (size_t i = 0; i < w.size(); ++i) w[i] = g0[i] * (1.0f + psi[i]);
  }
  void step(const std::vector<float>& dg, double lr, int t) {
    std::vector<float> gp(dg.size());
    for (size_t i = 0; i < gp.size(); ++i) gp[i] = dg[i] * g0[i];
    a.step(psi, gp, lr, t);
  }
};

// KL(teacher || student) summed over the rows of one batch; with `dlogits`, also its
// gradient with respect to the student logits, divided by `denom` (the mean over tokens).
double batch_kl(const std::vector<float>& lt, std::vector<float>& ls, int64_t rows, int64_t V, bool grad,
                double denom) {
  double total = 0.0;
#pragma omp parallel for reduction(+ : total) schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    const float* a = lt.data() + i * V;
    float* b = ls.data() + i * V;
    const float ma = *std::max_element(a, a + V), mb = *std::max_element(b, b + V);
    double za = 0.0, zb = 0.0;
    for (int64_t j = 0; j < V; ++j) za += std::exp(double(a[j] - ma)), zb += std::exp(double(b[j] - mb));
    const double la = std::log(za) + ma, lb = std::log(zb) + mb;
    double kl = 0.0;
    for (int64_t j = 0; j < V; ++j) {
      const double lpa = a[j] - la, lpb = b[j] - lb, pa = std::exp(lpa);
      kl += pa * (lpa - lpb);
      if (grad) b[j] = float((std::exp(lpb) - pa) / denom);
    }
    total += kl;
  }
  return total;
}

}  // namespace

FinetuneResult finetune_quantized(const ModelConfig& cfg, const TensorStore& teacher,
                                  std::map<std::string, std::shared_ptr<QuantizedWeight>>& linear,
                                  const FinetuneFixed& fixed, const std::vector<std::vector<int32_t>>& windows,
                                  const FinetuneOptions& opts) {
  FinetuneResult res;
  if (opts.epochs <= 0) return res;
  const int64_t L = cfg.n_layers, H = cfg.hidden;
  const int64_t nw = int64_t(windows.size());
  const int64_t nh = opts.holdout_windows > 0 ? opts.holdout_windows : std::max<int64_t>(1, nw / 16);
  if (nw < nh + 1) fail("fine-tuning needs at least {} calibration windows (got {})", nh + 1, nw);
  const int64_t ntrain = nw - nh, bw = std::max<int64_t>(1, std::min(opts.batch_windows, ntrain));

  // Teacher: every tensor as fp32. Student: the teacher's biases, the fixed lm_head and
  // embedding, trainable matrices and norms.
  std::map<std::string, std::vector<float>> tw;
  auto take = [&](const std::string& name) -> const float* {
    auto it = tw.find(name);
    if (it != tw.end()) return it->second.data();
    const TensorView* t = teacher.find(name);
    if (!t) return nullptr;
    if (t->dtype == DType::QBITS) fail("fine-tuning: teacher tensor {} is quantized; give the original model", name);
    return tw.emplace(name, tensor_as_f32(*t)).first->second.data();
  };
  auto need = [&](const std::string& name) {
    const float* p = take(name);
    if (!p) fail("fine-tuning: {}: missing tensor {}", teacher.origin(), name);
    return p;
  };
  auto student_norm = [&](const std::string& name) {
    auto it = fixed.norms.find(name);
    const std::vector<float>& t = tw.at(name);
    if (it == fixed.norms.end()) return t;
    if (it->second.size() != t.size()) fail("fine-tuning: the student's {} has {} values, expected {}", name, it->second.size(), t.size());
    return it->second;
  };
  GradModel tm, sm;
  tm.embed = need("model.embed_tokens.weight");
  const float* head = take("lm_head.weight");
  if (!head) head = tm.embed;
  tm.lm_head = GradLinear{head, nullptr, cfg.vocab, H};
  tm.final_norm = need("model.norm.weight");
  std::vector<TrainMatrix> mats(size_t(L * kGradMatrices));
  std::vector<TrainNorm> norms;
  norms.reserve(size_t(2 * L + 1));
  tm.layers.resize(size_t(L));
  sm.layers.resize(size_t(L));
  for (int64_t l = 0; l < L; ++l) {
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    for (int i = 0; i < kGradMatrices; ++i) {
      const std::string wn = pre + kMatrixNames[i] + ".weight";
      auto it = linear.find(wn);
      if (it == linear.end() || !it->second) fail("fine-tuning: {} is not among the quantized matrices", wn);
      QuantizedWeight& qw = *it->second;
      const TensorView& t = teacher.get(wn);
      if (t.shape.size() != 2 || t.shape[0] != qw.rows || t.shape[1] != qw.cols)
        fail("fine-tuning: {} has a different shape in the teacher", wn);
      const float* b = take(pre + kMatrixNames[i] + ".bias");
      tm.layers[size_t(l)].lin[i] = GradLinear{need(wn), b, qw.rows, qw.cols};
      TrainMatrix& tmx = mats[size_t(l * kGradMatrices + i)];
      tmx.init(qw);
      sm.layers[size_t(l)].lin[i] = GradLinear{tmx.w.data(), b, qw.rows, qw.cols};
    }
    tm.layers[size_t(l)].attn_norm = need(pre + "input_layernorm.weight");
    tm.layers[size_t(l)].mlp_norm = need(pre + "post_attention_layernorm.weight");
    norms.emplace_back().init(pre + "input_layernorm.weight", student_norm(pre + "input_layernorm.weight"));
    norms.emplace_back().init(pre + "post_attention_layernorm.weight",
                              student_norm(pre + "post_attention_layernorm.weight"));
    sm.layers[size_t(l)].attn_norm = norms[size_t(2 * l)].w.data();
    sm.layers[size_t(l)].mlp_norm = norms[size_t(2 * l + 1)].w.data();
  }
  norms.emplace_back().init("model.norm.weight", student_norm("model.norm.weight"));
  sm.final_norm = norms.back().w.data();
  auto check_fixed = [&](const std::vector<float>& v, const char* what) {
    if (!v.empty() && int64_t(v.size()) != cfg.vocab * H)
      fail("fine-tuning: the fixed {} has {} values, expected {}", what, v.size(), cfg.vocab * H);
  };
  check_fixed(fixed.lm_head, "lm_head");
  check_fixed(fixed.embed, "embedding");
  sm.embed = fixed.embed.empty() ? tm.embed : fixed.embed.data();
  sm.lm_head = GradLinear{fixed.lm_head.empty() ? head : fixed.lm_head.data(), nullptr, cfg.vocab, H};

  LlamaGrad graph(cfg);
  std::vector<float> lt, ls;
  auto rebuild = [&] {
    for (auto& m : mats) m.rebuild();
    for (auto& n : norms) n.rebuild();
  };
  auto batch_of = [&](const std::vector<int64_t>& idx, int64_t b0, int64_t b1) {
    std::vector<const std::vector<int32_t>*> out;
    for (int64_t i = b0; i < b1; ++i) out.push_back(&windows[size_t(idx[size_t(i)])]);
    return out;
  };
  std::vector<int64_t> hold(static_cast<size_t>(nh));
  std::iota(hold.begin(), hold.end(), ntrain);
  auto holdout_kl = [&] {
    double kl = 0.0;
    int64_t rows = 0;
    for (int64_t b0 = 0; b0 < nh; b0 += bw) {
      const auto batch = batch_of(hold, b0, std::min(nh, b0 + bw));
      graph.forward(tm, batch, false, lt);
      graph.forward(sm, batch, false, ls);
      const int64_t r = int64_t(lt.size()) / cfg.vocab;
      kl += batch_kl(lt, ls, r, cfg.vocab, false, 1.0);
      rows += r;
    }
    return kl / double(rows);
  };
  struct Snapshot {
    std::vector<std::vector<float>> theta, phi, psi;
  };
  auto snapshot = [&] {
    Snapshot s;
    for (auto& m : mats) s.theta.push_back(m.theta), s.phi.push_back(m.phi);
    for (auto& n : norms) s.psi.push_back(n.psi);
    return s;
  };

  rebuild();
  res.kl_start = res.kl_best = holdout_kl();
  Snapshot best = snapshot();
  spdlog::info("fine-tuning: {} epochs over {} windows ({} held out), held-out KL at the start {:.5f}", opts.epochs,
               ntrain, nh, res.kl_start);
  const int64_t steps_per_epoch = (ntrain + bw - 1) / bw, total = steps_per_epoch * opts.epochs;
  const int64_t warmup = std::max<int64_t>(1, std::min<int64_t>(10, total / 10));
  std::vector<int64_t> order(static_cast<size_t>(ntrain));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(20261124);
  ProgressBar bar("fine-tuning", opts.progress);
  ModelGrads grads;
  std::vector<float> gt, gz;
  int t = 0;
  double run_kl = 0.0;
  for (int e = 1; e <= opts.epochs; ++e) {
    std::shuffle(order.begin(), order.end(), rng);
    for (int64_t b0 = 0; b0 < ntrain; b0 += bw) {
      const auto batch = batch_of(order, b0, std::min(ntrain, b0 + bw));
      graph.forward(tm, batch, false, lt);
      graph.forward(sm, batch, true, ls);
      const int64_t rows = int64_t(lt.size()) / cfg.vocab;
      const double kl = batch_kl(lt, ls, rows, cfg.vocab, true, double(rows)) / double(rows);
      run_kl = t == 0 ? kl : 0.9 * run_kl + 0.1 * kl;
      graph.backward(sm, ls, grads);
      ++t;
      const double frac = double(t - 1) / double(std::max<int64_t>(1, total - 1));
      const double decay = 0.1 + 0.9 * 0.5 * (1.0 + std::cos(M_PI * frac));
      const double warm = t <= warmup ? double(t) / double(warmup) : 1.0;
      for (int64_t l = 0; l < L; ++l)
        for (int i = 0; i < kGradMatrices; ++i) {
          TrainMatrix& m = mats[size_t(l * kGradMatrices + i)];
          m.param_grads(grads.layers[size_t(l)].w[i], gt, gz);
          m.at.step(m.theta, gt, opts.lr * decay * warm, t);
          if (!m.phi.empty()) m.az.step(m.phi, gz, opts.zero_lr * decay * warm, t);
        }
      if (opts.train_norms) {
        for (int64_t l = 0; l < L; ++l) {
          norms[size_t(2 * l)].step(grads.layers[size_t(l)].attn_norm, opts.lr * decay * warm, t);
          norms[size_t(2 * l + 1)].step(grads.layers[size_t(l)].mlp_norm, opts.lr * decay * warm, t);
        }
        norms.back().step(grads.final_norm, opts.lr * decay * warm, t);
      }
      rebuild();
      bar.update(double(t), double(total), fmt::format(" steps, KL {:.4f}", run_kl));
    }
    const double kl = holdout_kl();
    res.epoch_kl.push_back(kl);
    if (kl < res.kl_best) res.kl_best = kl, res.best_epoch = e, best = snapshot();
  }
  bar.finish();
  res.steps = t;
  for (size_t e = 0; e < res.epoch_kl.size(); ++e)
    spdlog::info("fine-tuning: epoch {}: held-out KL {:.5f}", e + 1, res.epoch_kl[e]);
  spdlog::info("fine-tuning: keeping {} (held-out KL {:.5f}, start {:.5f})",
               res.best_epoch ? "epoch " + std::to_string(res.best_epoch) : std::string("the start"), res.kl_best,
               res.kl_start);
  for (size_t i = 0; i < mats.size(); ++i) {
    TrainMatrix& m = mats[i];
    m.theta = best.theta[i], m.phi = best.phi[i];
    QuantizedWeight& qw = *m.q;
    for (size_t g = 0; g < qw.scales.size(); ++g) qw.scales[g] = round_meta(m.scale(g), opts.meta_dtype);
    if (qw.asymmetric)
      for (size_t g = 0; g < qw.zeros.size(); ++g) qw.zeros[g] = round_meta(m.zero(g), opts.meta_dtype);
  }
  if (opts.train_norms && res.best_epoch > 0)
    for (size_t i = 0; i < norms.size(); ++i) {
      norms[i].psi = best.psi[i];
      norms[i].rebuild();
      res.norms[norms[i].name] = norms[i].w;
    }
  return res;
}

}  // namespace anybit::quant
