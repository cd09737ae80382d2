// Paged KV cache: fixed-size blocks shared by all sequences, each sequence
// holding a block table (vLLM's idea), so continuous batching only has to move
// block ids around. A block holds `block_size` positions of every layer:
//   [layer][K|V][kv_head][slot][head_dim]  (fp32)
// so one head's keys inside a block are contiguous for the attention kernel.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"

namespace anybit {

// One sequence's view of the cache: its block table and how many positions are filled.
struct SequenceKV {
  std::vector<int32_t> blocks;
  int64_t n_tokens = 0;
};

class KVCache {
 public:
  // host_storage = false keeps only the block bookkeeping: for a backend that holds the data
  // itself (LlamaCudaModel), so the host does not allocate an fp32 copy it never uses.
  KVCache(const ModelConfig& cfg, int64_t n_blocks, int64_t block_size = 16, bool host_storage = true);

  // Number of blocks that fit in `bytes` for this model, at `elem_bytes` per cached value
  // (4: fp32 on the host; the GPU's f16/bf16/i8 caches take less: kv_elem_bytes()).
  static int64_t blocks_for_bytes(const ModelConfig& cfg, size_t bytes, int64_t block_size = 16,
                                  double elem_bytes = 4.0);
  bool has_storage() const { return !storage_.empty(); }

  int64_t block_size() const { return block_size_; }
  int64_t n_blocks() const { return n_blocks_; }
  int64_t free_blocks() const { return int64_t(free_.size()); }
  int64_t head_dim() const { return head_dim_; }
  int64_t n_kv_heads() const { return n_kv_heads_; }

  // Grows seq's block table so that it can hold `n_tokens` positions.
  // Returns false (allocating nothing) when not enough blocks are free.
  bool reserve(SequenceKV& seq, int64_t n_tokens);
  // Returns all of seq's blocks to the pool and empties it.
  void release(SequenceKV& seq);
  // Shares a block (prefix caching): it is freed when its last user releases it.
  void retain(int32_t block) { ++refs_[size_t(block)]; }
  int32_t refcount(int32_t block) const { return refs_[size_t(block)]; }

  float* k(int32_t block, int64_t layer, int64_t kv_head) { return slot_ptr(block, layer, 0, kv_head); }
  float* v(int32_t block, int64_t layer, int64_t kv_head) { return slot_ptr(block, layer, 1, kv_head); }
  const float* k(int32_t block, int64_t layer, int64_t kv_head) const {
    return const_cast<KVCache*>(this)->slot_ptr(block, layer, 0, kv_head);
  }
  const float* v(int32_t block, int64_t layer, int64_t kv_head) const {
    return const_cast<KVCache*>(this)->slot_ptr(block, layer, 1, kv_head);
  }
  size_t bytes() const { return storage_.size() * sizeof(float); }  // host storage (0 without)

 private:
  float* slot_ptr(int32_t block, int64_t layer, int64_t kv, int64_t head) {
    return storage_.data() + size_t(block) * block_floats_ +
           size_t((layer * 2 + kv) * n_kv_heads_ + head) * size_t(block_size_ * head_dim_);
  }
  int64_t n_layers_, n_kv_heads_, head_dim_, block_size_, n_blocks_;
  size_t block_floats_;
  std::vector<float> storage_;
  std::vector<int32_t> free_;  // a stack of free block ids
  std::vector<int32_t> refs_;
};

}  // namespace anybit
