#include "model/config.h"

#include "core/error.h"

namespace anybit {

void ModelConfig::validate(const std::string& origin) const {
  auto positive = [&](int64_t v, const char* what) {
    if (v <= 0 || v > (int64_t(1) << 24)) fail("{}: {} must be positive (got {})", origin, what, v);
  };
  positive(hidden, "hidden_size");
  positive(n_layers, "num_hidden_layers");
  positive(n_heads, "num_attention_heads");
  positive(n_kv_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  positive(ffn, "intermediate_size");
  positive(vocab, "vocab_size");
  if (n_heads % n_kv_heads != 0)
    fail("{}: num_attention_heads ({}) is not a multiple of num_key_value_heads ({})", origin, n_heads, n_kv_heads);
  if (head_dim % 2 != 0 || head_dim > 1024) fail("{}: head_dim ({}) must be even and at most 1024", origin, head_dim);
  if (!(rms_eps > 0.0f)) fail("{}: rms_norm_eps must be positive", origin);
  if (!(rope_theta > 0.0f)) fail("{}: rope_theta must be positive", origin);
}

}  // namespace anybit
