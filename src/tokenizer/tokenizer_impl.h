// The tokenizer pipeline shared by the Hugging Face and GGUF loaders:
// added-token split -> normalizer -> pre-tokenizer -> model -> post-processor,
// and the per-token byte strings used for decoding.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/bpe.h"
#include "tokenizer/regex.h"
#include "tokenizer/tokenizer.h"

namespace anybit {

// The pre-tokenizer patterns Hugging Face and llama.cpp use (Oniguruma syntax, which
// PCRE2 accepts as is).
inline constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
inline constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr const char* kMetaspace = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

struct NormStep {
  enum Kind { kPrepend, kReplace, kStrip, kLowercase } kind;
  explicit NormStep(Kind k, std::string a_ = {}, std::string b_ = {}) : kind(k), a(std::move(a_)), b(std::move(b_)) {}
  std::string a;  // prepend text / replace pattern (literal)
  std::string b;  // replacement
  std::shared_ptr<Regex> re;  // replace pattern given as a regex
  bool left = false, right = false;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreStep {
  enum Kind { kByteLevel, kSplit, kMetaspace } kind;
  explicit PreStep(Kind k) : kind(k) {}
  // ByteLevel
  bool add_prefix_space = false;
  bool use_regex = true;
  // Split (regex, or literal when re is null) and Metaspace's split on the replacement
  std::shared_ptr<Regex> re;
  std::string literal;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  // Metaspace
  std::string replacement;
  enum Prepend { kAlways, kFirst, kNever } prepend = kAlways;
  bool split = true;
};

class TokenizerImpl {
 public:
  std::string origin;  // file name or description, for messages

  // Vocabulary over all ids (model vocab + added tokens).
  std::vector<std::string> id_to_token;
  StrIdMap token_to_id;
  std::vector<std::string> raw;       // decoded bytes per id
  std::vector<uint8_t> special;       // skipped by decode(skip_special)
  std::vector<AddedToken> added;
  std::array<std::vector<int32_t>, 256> added_by_byte;  // indices into `added`, longest first

  std::vector<NormStep> normalizers;
  std::vector<PreStep> pre;
  bool use_spm = false;
  bool spm_add_space_prefix = true;  // llama.cpp: a space before the first text and after specials
  BpeModel bpe;
  SpmModel spm;

  std::vector<int32_t> prefix, suffix;  // post-processor

  // Decoder: per-token transforms used to build `raw`, then a strip of leading
  // spaces on the joined text (HF Strip after Fuse, Metaspace, SentencePiece).
  bool decode_bytelevel = false;
  bool decode_byte_fallback = false;  // <0xNN> tokens stand for one byte
  std::vector<std::pair<std::string, std::string>> decode_replace;
  size_t strip_leading_spaces = 0;

  int32_t bos = -1;
  int32_t pad = -1;
  std::vector<int32_t> eos;
  std::string bos_token, eos_token, chat_template;

  // Kept for to_gguf_vocab().
  std::string gguf_pre;  // "" when the pipeline has no GGUF name
  std::unique_ptr<GgufVocab> gguf_source;

  // Called once the vocab, added tokens and decoder settings are in place: builds
  // `raw`, `special` and the added-token index.
  void finalize();
  void encode(std::string_view text, bool add_special, std::vector<int32_t>& out) const;

 private:
  void encode_segment(std::string_view text, bool at_start, bool after_added, std::vector<int32_t>& out) const;
  void normalize(std::string& s) const;
  void pre_tokenize(std::string text, bool at_start, std::vector<std::string>& pieces) const;
};

// Splits `text` per `behavior` around `matches` (byte ranges), appending pieces.
void split_pieces(std::string_view text, const std::vector<std::pair<size_t, size_t>>& matches,
                  SplitBehavior behavior, bool invert, std::vector<std::string>& out);

}  // namespace anybit
