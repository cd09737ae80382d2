#include "runtime/random_model.h"

#include <algorithm>
#include <random>

#include "core/error.h"

namespace anybit {

ModelConfig named_shape(const std::string& name) {
  ModelConfig c;
  c.arch = "llama";
  c.vocab = 8192;
  c.rope_theta = 500000.0f;
  c.rms_eps = 1e-5f;
  c.max_position = 4096;
  c.bos_id = 0;
  c.eos_ids = {1};
  if (name == "llama-1b") {  // Llama-3.2-1B with a small vocabulary
    c.hidden = 2048, c.n_layers = 16, c.n_heads = 32, c.n_kv_heads = 8, c.head_dim = 64, c.ffn = 8192;
  } else if (name == "llama-8b") {  // Llama-3-8B with a small vocabulary
    c.hidden = 4096, c.n_layers = 32, c.n_heads = 32, c.n_kv_heads = 8, c.head_dim = 128, c.ffn = 14336;
  } else if (name == "tiny") {
    c.hidden = 256, c.n_layers = 4, c.n_heads = 8, c.n_kv_heads = 2, c.head_dim = 32, c.ffn = 768;
  } else {
    fail("unknown shape '{}' (known: llama-1b, llama-8b, tiny)", name);
  }
  return c;
}

std::vector<std::string> named_shapes() { return {"llama-1b", "llama-8b", "tiny"}; }

namespace {

// Chunks of 1 Mi values, each from its own generator seeded by (tensor seed, chunk): the
// same weights for any thread count, and an 8B shape fills in seconds rather than minutes
// (one normal sample costs ~20 ns; 7 billion of them on one thread took 5 minutes).
void add_random(TensorStore& store, const std::string& name, std::vector<int64_t> shape, DType dtype,
                std::mt19937_64& rng, bool ones) {
  TensorView t;
  t.name = name;
  t.shape = std::move(shape);
  t.dtype = dtype;
  const int64_t n = t.numel();
  if (dtype != DType::F32 && dtype != DType::F16 && dtype != DType::BF16)
    fail("random weights in {} are not supported", dtype_name(dtype));
  std::vector<uint8_t> bytes(dtype_row_bytes(dtype, n));
  const uint64_t tensor_seed = rng();
  constexpr int64_t kChunk = int64_t(1) << 20;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t ch = 0; ch < chunks; ++ch) {
    std::mt19937_64 gen(tensor_seed ^ (0x9e3779b97f4a7c15ull * uint64_t(ch + 1)));
    std::normal_distribution<float> dist(0.0f, 0.02f);
    const int64_t end = std::min(n, (ch + 1) * kChunk);
    for (int64_t i = ch * kChunk; i < end; ++i) {
      const float v = ones ? 1.0f : dist(gen);
      if (dtype == DType::F32) reinterpret_cast<float*>(bytes.data())[i] = v;
      else if (dtype == DType::F16) reinterpret_cast<uint16_t*>(bytes.data())[i] = f32_to_f16(v);
      else reinterpret_cast<uint16_t*>(bytes.data())[i] = f32_to_bf16(v);
    }
  }
  t.nbytes = bytes.size();
  t.data = store.own(std::move(bytes));
  store.add(std::move(t));
}

}  // namespace

ModelFiles make_random_model(const ModelConfig& cfg, DType dtype, uint64_t seed) {
  ModelFiles m;
  m.path = "random";
  m.format = "random";
  m.config = cfg;
  auto store = std::make_shared<TensorStore>();
  store->set_origin("random model");
  std::mt19937_64 rng(seed);
  const int64_t H = cfg.hidden, hd = cfg.head_dim;
  add_random(*store, "model.embed_tokens.weight", {cfg.vocab, H}, dtype, rng, false);
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add_random(*store, p + "input_layernorm.weight", {H}, DType::F32, rng, true);
    add_random(*store, p + "post_attention_layernorm.weight", {H}, DType::F32, rng, true);
    add_random(*store, p + "self_attn.q_proj.weight", {cfg.n_heads * hd, H}, dtype, rng, false);
    add_random(*store, p + "self_attn.k_proj.weight", {cfg.n_kv_heads * hd, H}, dtype, rng, false);
    add_random(*store, p + "self_attn.v_proj.weight", {cfg.n_kv_heads * hd, H}, dtype, rng, false);
    add_random(*store, p + "self_attn.o_proj.weight", {H, cfg.n_heads * hd}, dtype, rng, false);
    add_random(*store, p + "mlp.gate_proj.weight", {cfg.ffn, H}, dtype, rng, false);
    add_random(*store, p + "mlp.up_proj.weight", {cfg.ffn, H}, dtype, rng, false);
    add_random(*store, p + "mlp.down_proj.weight", {H, cfg.ffn}, dtype, rng, false);
  }
  add_random(*store, "model.norm.weight", {H}, DType::F32, rng, true);
  add_random(*store, "lm_head.weight", {cfg.vocab, H}, dtype, rng, false);
  m.weights = std::move(store);
  return m;
}

}  // namespace anybit
