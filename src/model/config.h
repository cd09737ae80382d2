// Architecture hyper-parameters of a Llama-family model, whatever file they came from.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace anybit {

struct RopeScaling {
  enum class Kind { None, Linear, Llama3 } kind = Kind::None;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;   // llama3
  float high_freq_factor = 4.0f;  // llama3
  int64_t original_max_position = 8192;  // llama3
};

struct ModelConfig {
  std::string arch = "llama";  // llama | mistral | qwen2
  int64_t hidden = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t ffn = 0;
  int64_t vocab = 0;
  int64_t max_position = 2048;
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  bool tie_embeddings = false;
  bool attn_bias = false;  // q/k/v projections carry a bias (qwen2)
  bool attn_out_bias = false;
  bool mlp_bias = false;
  int64_t sliding_window = 0;  // 0 = full attention
  int32_t bos_id = -1;
  std::vector<int32_t> eos_ids;

  void validate(const std::string& origin) const;  // throws on inconsistent values
};

// Parses a Hugging Face config.json (llama, mistral, qwen2). generation_config.json,
// when given, can add eos ids.
ModelConfig parse_hf_config(const std::string& config_json_text, const std::string& origin);
void merge_generation_config(const std::string& json_text, ModelConfig& config, const std::string& origin);

}  // namespace anybit
