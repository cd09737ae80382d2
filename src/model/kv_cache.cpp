#include "model/kv_cache.h"

#include "core/error.h"

namespace anybit {

KVCache::KVCache(const ModelConfig& cfg, int64_t n_blocks, int64_t block_size, bool host_storage)
    : n_layers_(cfg.n_layers),
      n_kv_heads_(cfg.n_kv_heads),
      head_dim_(cfg.head_dim),
      block_size_(block_size),
      n_blocks_(n_blocks) {
  if (block_size <= 0 || n_blocks <= 0) fail("KV cache needs a positive block count and size");
  block_floats_ = size_t(n_layers_ * 2 * n_kv_heads_ * block_size_ * head_dim_);
  if (host_storage) storage_.assign(block_floats_ * size_t(n_blocks_), 0.0f);
  refs_.assign(size_t(n_blocks_), 0);
  free_.reserve(size_t(n_blocks_));
  for (int64_t b = n_blocks_ - 1; b >= 0; --b) free_.push_back(int32_t(b));
}

int64_t KVCache::blocks_for_bytes(const ModelConfig& cfg, size_t bytes, int64_t block_size, double elem_bytes) {
  const double per_block = double(cfg.n_layers * 2 * cfg.n_kv_heads * block_size * cfg.head_dim) * elem_bytes;
  return int64_t(double(bytes) / per_block);
}

bool KVCache::reserve(SequenceKV& seq, int64_t n_tokens) {
  const int64_t need = (n_tokens + block_size_ - 1) / block_size_ - int64_t(seq.blocks.size());
  if (need <= 0) return true;
  if (need > int64_t(free_.size())) return false;
  for (int64_t i = 0; i < need; ++i) {
    const int32_t b = free_.back();
    free_.pop_back();
    refs_[size_t(b)] = 1;
    seq.blocks.push_back(b);
  }
  return true;
}

void KVCache::release(SequenceKV& seq) {
  for (int32_t b : seq.blocks)
    if (--refs_[size_t(b)] == 0) free_.push_back(b);
  seq.blocks.clear();
  seq.n_tokens = 0;
}

}  // namespace anybit
