// Hugging Face config.json → ModelConfig for the llama, mistral and qwen2 families.
#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/config.h"

namespace anybit {

using json = nlohmann::json;

namespace {

void parse_rope(const json& rp, ModelConfig& c, const std::string& origin) {
  if (!rp.is_object()) return;
  if (rp.contains("rope_theta")) c.rope_theta = rp["rope_theta"].get<float>();
  std::string type = rp.value("rope_type", rp.value("type", std::string("default")));
  if (type == "default" || type.empty()) return;
  if (type == "linear") {
    c.rope_scaling.kind = RopeScaling::Kind::Linear;
    c.rope_scaling.factor = rp.at("factor").get<float>();
  } else if (type == "llama3") {
    auto& s = c.rope_scaling;
    s.kind = RopeScaling::Kind::Llama3;
    s.factor = rp.at("factor").get<float>();
    s.low_freq_factor = rp.value("low_freq_factor", 1.0f);
    s.high_freq_factor = rp.value("high_freq_factor", 4.0f);
    s.original_max_position = rp.value("original_max_position_embeddings", int64_t(8192));
  } else {
    fail("{}: unsupported rope scaling type '{}' (supported: default, linear, llama3)", origin, type);
  }
}

std::vector<int32_t> ids_of(const json& v) {
  std::vector<int32_t> out;
  if (v.is_number_integer()) out.push_back(v.get<int32_t>());
  if (v.is_array())
    for (const auto& e : v) out.push_back(e.get<int32_t>());
  return out;
}

}  // namespace

ModelConfig parse_hf_config(const std::string& text, const std::string& origin) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", origin, e.what());
  }
  if (!j.is_object()) fail("{}: config is not a JSON object", origin);
  ModelConfig c;
  try {
    const std::string type = j.value("model_type", std::string());
    if (type != "llama" && type != "mistral" && type != "qwen2")
      fail("{}: unsupported architecture model_type='{}' (supported: llama, mistral, qwen2)", origin, type);
    c.arch = type;
    c.hidden = j.at("hidden_size").get<int64_t>();
    c.n_layers = j.at("num_hidden_layers").get<int64_t>();
    c.n_heads = j.at("num_attention_heads").get<int64_t>();
    c.n_kv_heads = j.value("num_key_value_heads", c.n_heads);
    c.ffn = j.at("intermediate_size").get<int64_t>();
    c.vocab = j.at("vocab_size").get<int64_t>();
    c.head_dim = (j.contains("head_dim") && !j["head_dim"].is_null()) ? j["head_dim"].get<int64_t>()
                                                                      : (c.n_heads ? c.hidden / c.n_heads : 0);
    c.max_position = j.value("max_position_embeddings", int64_t(2048));
    c.rms_eps = j.value("rms_norm_eps", 1e-6f);
    c.rope_theta = 10000.0f;
    if (j.contains("rope_theta") && !j["rope_theta"].is_null()) c.rope_theta = j["rope_theta"].get<float>();
    if (j.contains("rope_parameters")) parse_rope(j["rope_parameters"], c, origin);
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) parse_rope(j["rope_scaling"], c, origin);
    c.tie_embeddings = j.value("tie_word_embeddings", false);
    if (type == "qwen2") {
      c.attn_bias = true;  // Qwen2 always has q/k/v biases and none on o_proj
    } else {
      c.attn_bias = j.value("attention_bias", false);
      c.attn_out_bias = c.attn_bias;
    }
    c.mlp_bias = j.value("mlp_bias", false);
    const std::string act = j.value("hidden_act", std::string("silu"));
    if (act != "silu") fail("{}: unsupported hidden_act '{}' (only silu)", origin, act);
    if (j.contains("sliding_window") && j["sliding_window"].is_number_integer()) {
      const bool use = type != "qwen2" || j.value("use_sliding_window", false);
      if (use) c.sliding_window = j["sliding_window"].get<int64_t>();
    }
    if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer()) c.bos_id = j["bos_token_id"].get<int32_t>();
    if (j.contains("eos_token_id")) c.eos_ids = ids_of(j["eos_token_id"]);
  } catch (const json::exception& e) {
    fail("{}: malformed config: {}", origin, e.what());
  }
  c.validate(origin);
  return c;
}

void merge_generation_config(const std::string& text, ModelConfig& c, const std::string& origin) {
  json j;
  try {
    j = json::parse(text);
    if (j.contains("eos_token_id"))
      for (int32_t id : ids_of(j["eos_token_id"]))
        if (std::find(c.eos_ids.begin(), c.eos_ids.end(), id) == c.eos_ids.end()) c.eos_ids.push_back(id);
  } catch (const json::exception& e) {
    fail("{}: invalid generation config: {}", origin, e.what());
  }
}

}  // namespace anybit
