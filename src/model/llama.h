// The Llama-family transformer (llama, mistral, qwen2): RMSNorm, RoPE, grouped-query
// attention over a paged KV cache, SwiGLU MLP. Weights stay in their stored dtype;
// activations and accumulation are fp32.
//
// forward() takes a batch of sequences, each appending any number of tokens at its
// own position (prefill and decode mixed in one call), which is what continuous
// batching needs.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <memory>
#include <vector>

#include "formats/tensor_store.h"
#include "kernels/dispatch.h"
#include "model/config.h"
#include "model/kv_cache.h"

namespace anybit {

struct BatchEntry {
  SequenceKV* seq = nullptr;          // its KV; positions continue from seq->n_tokens
  const int32_t* tokens = nullptr;
  int64_t n_tokens = 0;
  bool all_logits = false;            // logits for every token (perplexity) or only the last
};

struct ForwardOutput {
  std::vector<float> logits;          // rows of vocab floats, entries in batch order
  std::vector<int64_t> row_offset;    // first logits row of each batch entry
  const float* row(size_t entry, int64_t i = 0) const;
  int64_t vocab = 0;
};

class LlamaModel {
 public:
  // Checks every tensor's presence and shape against the config (throws naming `weights.origin()`).
  LlamaModel(const ModelConfig& cfg, std::shared_ptr<const TensorStore> weights);

  const ModelConfig& config() const { return cfg_; }

  // Runs the batch; reserves the KV blocks it needs first and throws anybit::Error
  // (changing nothing) if the cache cannot hold them.
  void forward(const std::vector<BatchEntry>& batch, KVCache& kv, ForwardOutput& out);

  size_t weight_bytes() const;

  // Layers [from, to) only, for fresh sequences (n_tokens 0, left unchanged; the caller
  // releases their blocks). `stream` holds the residual stream entering layer `from`
  // (total x hidden, the entries' tokens in order); with from == 0 it is ignored and the
  // embedding is looked up. On return it holds the stream leaving layer to - 1 (from == to:
  // just the embedding or the input). Sequential calibration keeps every window's stream
  // between stages instead of running the model from the start at each one.
  void forward_layers(const std::vector<BatchEntry>& batch, KVCache& kv, int64_t from, int64_t to,
                      std::vector<float>& stream);

  // Calibration hook: called with the fp32 input rows of every linear layer, named by its
  // weight (e.g. "model.layers.3.mlp.down_proj.weight"), before the matmul runs.
  using ActivationObserver = std::function<void(const std::string& weight, const float* x, int64_t m, int64_t k)>;
  void set_observer(ActivationObserver obs) { observer_ = std::move(obs); }

 private:
  struct Layer {
    std::string prefix;  // "model.layers.N."
    std::vector<float> attn_norm, mlp_norm;
    WeightMatrix q, k, v, o, gate, up, down;
    std::vector<float> q_bias, k_bias, v_bias, o_bias, gate_bias, up_bias, down_bias;
  };
  struct Scratch {
    std::vector<float> x, xn, q, k, v, att, proj, gate, up, act;
    std::vector<int64_t> pos;
    void resize(int64_t t, const ModelConfig& c);
  };

  // Validates the entries and reserves their KV blocks (all or none); returns the token count.
  int64_t reserve_batch(const std::vector<BatchEntry>& batch, KVCache& kv);
  void embed(const std::vector<BatchEntry>& batch, int64_t total);
  void attention_block(const Layer& L, int64_t layer, const std::vector<BatchEntry>& batch, int64_t total,
                       KVCache& kv);
  void mlp_block(const Layer& L, int64_t total);
  // y = x · W^T for `m` rows, reporting x to the observer first.
  void linear(const Layer& L, const char* name, const WeightMatrix& w, const float* x, int64_t m, float* y);

  ModelConfig cfg_;
  std::shared_ptr<const TensorStore> weights_;
  const TensorView* embed_ = nullptr;
  WeightMatrix lm_head_;
  std::vector<float> final_norm_;
  std::vector<Layer> layers_;
  std::vector<float> inv_freq_;
  Scratch s_;
  ActivationObserver observer_;
};

}  // namespace anybit
