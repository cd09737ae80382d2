// The two merge algorithms: rank-ordered BPE (Hugging Face / GPT-2 merges list)
// and score-ordered SentencePiece BPE (GGUF "llama" vocabularies).
#pragma once
#include <array>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace anybit {

struct StrHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
struct StrEq {
  using is_transparent = void;
  bool operator()(std::string_view a, std::string_view b) const noexcept { return a == b; }
};
using StrIdMap = std::unordered_map<std::string, int32_t, StrHash, StrEq>;

struct BpeOptions {
  bool byte_fallback = false;  // unknown characters become <0xNN> tokens
  bool ignore_merges = false;  // a word that is itself in the vocab is emitted whole
  bool fuse_unk = false;       // consecutive unknowns collapse into one unk token
  int32_t unk_id = -1;         // -1: unknown characters are dropped (as HF does without unk_token)
};

// Rank-ordered BPE over the characters of a pre-tokenized word.
class BpeModel {
 public:
  BpeModel() = default;
  // `vocab` maps token text to id; merges are (left, right) in rank order. Throws
  // anybit::Error naming `origin` when a merge names a token absent from the vocab.
  void build(const StrIdMap& vocab, const std::vector<std::pair<std::string, std::string>>& merges,
             const BpeOptions& opt, const std::string& origin);

  // Appends the ids of `word` to `out`. Results for short words are cached.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

  const std::vector<std::pair<std::string, std::string>>& merges() const { return merge_list_; }
  const BpeOptions& options() const { return opt_; }

 private:
  void tokenize_uncached(std::string_view word, std::vector<int32_t>& out) const;

  StrIdMap vocab_;
  BpeOptions opt_;
  std::unordered_map<uint32_t, int32_t> char_ids_;  // single-character tokens by code point
  // (left id << 32 | right id) -> (rank, merged id)
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;
  std::vector<std::pair<std::string, std::string>> merge_list_;
  std::array<int32_t, 256> byte_ids_{};
  bool have_all_bytes_ = false;

  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StrHash, StrEq> cache_;
};

// SentencePiece BPE as llama.cpp runs it: repeatedly merge the adjacent pair whose
// concatenation is a vocabulary token with the highest score; characters left
// outside the vocabulary fall back to <0xNN> byte tokens, else to unk.
class SpmModel {
 public:
  void build(const StrIdMap& vocab, const std::vector<float>& scores, int32_t unk_id);
  // `text` is already normalized (spaces replaced by U+2581, prefix added).
  void tokenize(std::string_view text, std::vector<int32_t>& out) const;

 private:
  StrIdMap vocab_;
  std::vector<float> scores_;
  std::array<int32_t, 256> byte_ids_{};
  int32_t unk_id_ = -1;
};

}  // namespace anybit
