#include "quant/random_qbits.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"

namespace anybit {

namespace {

void add_qweight(TensorStore& store, const std::string& name, std::shared_ptr<QuantizedWeight> w) {
  TensorView t;
  t.name = name;
  t.dtype = DType::QBITS;
  t.shape = {w->rows, w->cols};
  t.data = w.get();
  // The size it has on disk (f16 scales and zeros), so bits-per-weight figures match.
  t.nbytes = w->codes.size() + 2 * (w->scales.size() + w->zeros.size());
  store.add(std::move(t));
  // An aliasing pointer with no MappedFile: the store's keep-alive list owns the weight.
  store.keep_alive(std::shared_ptr<MappedFile>(std::move(w), nullptr));
}

void add_plain(TensorStore& store, const std::string& name, std::vector<int64_t> shape, bool ones,
               std::mt19937_64& rng) {
  TensorView t;
  t.name = name;
  t.shape = std::move(shape);
  t.dtype = ones ? DType::F32 : DType::BF16;
  const int64_t n = t.numel();
  std::vector<uint8_t> bytes(dtype_row_bytes(t.dtype, n));
  std::normal_distribution<float> nd(0.0f, 0.02f);
  for (int64_t i = 0; i < n; ++i) {
    if (ones) {
      const float one = 1.0f;
      std::memcpy(bytes.data() + 4 * i, &one, 4);
    } else {
      const uint16_t h = f32_to_bf16(nd(rng));
      std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
  }
  t.nbytes = bytes.size();
  t.data = store.own(std::move(bytes));
  store.add(std::move(t));
}

}  // namespace

ModelFiles make_random_qbits_model(const ModelConfig& cfg, int bits, int group, uint64_t seed, int act_bits) {
  const int64_t H = cfg.hidden, hd = cfg.head_dim;
  if (H % group != 0 || cfg.ffn % group != 0 || (cfg.n_heads * hd) % group != 0)
    fail("random qbits model: group {} does not divide the layer widths", group);
  ModelFiles m;
  m.path = "random";
  m.format = "random";
  m.config = cfg;
  auto store = std::make_shared<TensorStore>();
  store->set_origin("random qbits model");
  // The quantized weights are drawn in parallel (each from its own seed: the same model for
  // any thread count; the 8B shape took 75 s on one thread), then added in order.
  struct Job {
    std::string name;
    int64_t rows, cols;
  };
  std::vector<Job> jobs;
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    jobs.push_back({p + "self_attn.q_proj.weight", cfg.n_heads * hd, H});
    jobs.push_back({p + "self_attn.k_proj.weight", cfg.n_kv_heads * hd, H});
    jobs.push_back({p + "self_attn.v_proj.weight", cfg.n_kv_heads * hd, H});
    jobs.push_back({p + "self_attn.o_proj.weight", H, cfg.n_heads * hd});
    jobs.push_back({p + "mlp.gate_proj.weight", cfg.ffn, H});
    jobs.push_back({p + "mlp.up_proj.weight", cfg.ffn, H});
    jobs.push_back({p + "mlp.down_proj.weight", H, cfg.ffn});
  }
  jobs.push_back({"lm_head.weight", cfg.vocab, H});
  std::vector<std::shared_ptr<QuantizedWeight>> made(jobs.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t j = 0; j < int64_t(jobs.size()); ++j)
    made[size_t(j)] = make_random_qweight(jobs[size_t(j)].rows, jobs[size_t(j)].cols, bits, group, false,
                                          seed * 1000003 + uint64_t(j) + 1);
  for (size_t j = 0; j < jobs.size(); ++j) {
    made[j]->act_bits = act_bits;
    add_qweight(*store, jobs[j].name, std::move(made[j]));
  }

  std::mt19937_64 rng(seed);
  add_plain(*store, "model.embed_tokens.weight", {cfg.vocab, H}, false, rng);
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add_plain(*store, p + "input_layernorm.weight", {H}, true, rng);
    add_plain(*store, p + "post_attention_layernorm.weight", {H}, true, rng);
  }
  add_plain(*store, "model.norm.weight", {H}, true, rng);
  m.weights = std::move(store);
  return m;
}

}  // namespace anybit
