// Causal attention over the paged KV cache, grouped-query aware, with an
// online (single-pass, max-rescaled) softmax processed one KV block at a time.
#pragma once
#include <cstdint>

#include "model/kv_cache.h"

namespace anybit {

struct AttentionArgs {
  const float* q = nullptr;  // [n_q][n_heads * head_dim], already rotated
  int64_t n_q = 0;           // new query tokens of this sequence
  int64_t pos0 = 0;          // position of the first query; the cache holds [0, pos0 + n_q)
  int64_t layer = 0;
  int64_t n_heads = 0;
  float scale = 1.0f;
  int64_t window = 0;        // sliding window (0 = unlimited)
  float* out = nullptr;      // [n_q][n_heads * head_dim]
};

void attention_paged(const AttentionArgs& a, const KVCache& kv, const SequenceKV& seq);
// Single-threaded, straightforward two-pass softmax: the reference for tests.
void attention_paged_reference(const AttentionArgs& a, const KVCache& kv, const SequenceKV& seq);

}  // namespace anybit
