// Tokenizers from GGUF tokenizer.ggml.* metadata, and the reverse export.
#include <algorithm>

#include <spdlog/spdlog.h>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"

namespace anybit {
namespace {

enum TokenType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// Configures the pre-tokenizer for a GGUF `pre` name; returns the canonical name.
std::string setup_gpt2_pre(TokenizerImpl& t, const std::string& pre, const std::string& origin) {
  const char* pattern = nullptr;
  std::string name = pre;
  if (pre.empty() || pre == "gpt-2" || pre == "default") {
    name = "gpt-2";
  } else if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") {
    pattern = kLlama3Pattern;
    name = "llama-bpe";
  } else if (pre == "qwen2") {
    pattern = kQwen2Pattern;
  } else {
    spdlog::warn("{}: unknown tokenizer.ggml.pre '{}', using the GPT-2 pre-tokenizer", origin, pre);
    name = "gpt-2";
  }
  if (!pattern) {
    PreStep st(PreStep::kByteLevel);
    st.use_regex = true;
    st.re = std::make_shared<Regex>(kGpt2Pattern, origin);
    t.pre.push_back(std::move(st));
  } else {
    PreStep split(PreStep::kSplit);
    split.re = std::make_shared<Regex>(pattern, origin);
    t.pre.push_back(std::move(split));
    PreStep bl(PreStep::kByteLevel);
    bl.use_regex = false;
    t.pre.push_back(std::move(bl));
  }
  return name;
}

int32_t checked_id(int32_t id, size_t n, const char* what, const std::string& origin) {
  if (id < -1 || id >= static_cast<int32_t>(n)) {
    spdlog::warn("{}: {} id {} is outside the vocabulary of {}; ignored", origin, what, id, n);
    return -1;
  }
  return id;
}

}  // namespace

Tokenizer Tokenizer::from_gguf_vocab(const GgufVocab& v, const std::string& origin) {
  Tokenizer tok;
  TokenizerImpl& t = *tok.impl_;
  t.origin = origin;
  const size_t n = v.tokens.size();
  if (n == 0) fail("{}: tokenizer vocabulary is empty", origin);
  if (!v.token_types.empty() && v.token_types.size() != n)
    fail("{}: {} token types for {} tokens", origin, v.token_types.size(), n);
  if (!v.scores.empty() && v.scores.size() != n) fail("{}: {} token scores for {} tokens", origin, v.scores.size(), n);

  t.id_to_token = v.tokens;
  for (size_t id = 0; id < n; ++id) t.token_to_id.try_emplace(v.tokens[id], static_cast<int32_t>(id));
  for (size_t id = 0; id < n; ++id) {
    const int32_t type = v.token_types.empty() ? kNormal : v.token_types[id];
    if ((type == kControl || type == kUserDefined || type == kUnknown) && !v.tokens[id].empty()) {
      AddedToken a;
      a.content = v.tokens[id];
      a.id = static_cast<int32_t>(id);
      a.special = type != kUserDefined;
      t.added.push_back(std::move(a));
    }
  }
  const int32_t bos = checked_id(v.bos_id, n, "bos", origin);
  const int32_t eos = checked_id(v.eos_id, n, "eos", origin);
  const int32_t unk = checked_id(v.unk_id, n, "unk", origin);
  t.pad = checked_id(v.pad_id, n, "pad", origin);

  if (v.model == "gpt2") {
    std::vector<std::pair<std::string, std::string>> merges;
    merges.reserve(v.merges.size());
    for (const std::string& m : v.merges) {
      const size_t sp = m.find(' ', 1);
      if (sp == std::string::npos) fail("{}: merge '{}' is not two space-separated tokens", origin, m);
      merges.emplace_back(m.substr(0, sp), m.substr(sp + 1));
    }
    t.gguf_pre = setup_gpt2_pre(t, v.pre, origin);
    BpeOptions opt;
    opt.unk_id = unk;
    // llama.cpp emits whole-vocabulary words unmerged for Llama-3, as its tokenizer.json says.
    opt.ignore_merges = t.gguf_pre == "llama-bpe";
    t.bpe.build(t.token_to_id, merges, opt, origin);
    t.decode_bytelevel = true;
  } else if (v.model == "llama") {
    t.use_spm = true;
    t.spm.build(t.token_to_id, v.scores, unk);
    t.decode_replace.emplace_back(kMetaspace, " ");
    t.decode_byte_fallback = true;
    t.spm_add_space_prefix = v.add_space_prefix;
    t.strip_leading_spaces = v.add_space_prefix ? 1 : 0;
  } else {
    fail("{}: unsupported tokenizer model '{}' (expected gpt2 or llama)", origin, v.model);
  }

  t.bos = bos;
  if (bos >= 0) t.bos_token = v.tokens[bos];
  if (v.add_bos && bos >= 0) t.prefix.push_back(bos);
  if (eos >= 0) {
    t.eos.push_back(eos);
    t.eos_token = v.tokens[eos];
    if (v.add_eos) t.suffix.push_back(eos);
  }
  // End-of-turn markers of chat models also end generation (llama.cpp does the same).
  for (const char* name : {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|eom_id|>"}) {
    auto it = t.token_to_id.find(name);
    if (it != t.token_to_id.end() && std::find(t.eos.begin(), t.eos.end(), it->second) == t.eos.end())
      t.eos.push_back(it->second);
  }
  t.gguf_source = std::make_unique<GgufVocab>(v);
  t.gguf_source->pre = t.use_spm ? v.pre : t.gguf_pre;
  t.finalize();
  return tok;
}

GgufVocab Tokenizer::to_gguf_vocab() const {
  if (!impl_) fail("to_gguf_vocab: empty tokenizer");
  const TokenizerImpl& t = *impl_;
  if (t.gguf_source) return *t.gguf_source;
  if (!t.decode_bytelevel || t.use_spm)
    fail("{}: only byte-level BPE tokenizers can be written as a GGUF vocabulary", t.origin);
  if (t.gguf_pre.empty())
    fail("{}: the pre-tokenizer has no GGUF equivalent (need ByteLevel with the GPT-2 regex, or a "
         "Llama-3/Qwen2 Split regex)", t.origin);
  GgufVocab v;
  v.model = "gpt2";
  v.pre = t.gguf_pre;
  const size_t n = t.id_to_token.size();
  v.tokens.resize(n);
  v.token_types.assign(n, kNormal);
  for (size_t id = 0; id < n; ++id) {
    v.tokens[id] = t.id_to_token[id];
    if (v.tokens[id].empty()) {
      // Holes in the id space still need a unique name in a GGUF token list.
      v.tokens[id] = "[PAD" + std::to_string(id) + "]";
      v.token_types[id] = kUnused;
    }
  }
  // Non-special added tokens are marked user-defined (as llama.cpp's converter does)
  // so that a reader still splits them out before BPE.
  for (const AddedToken& a : t.added) v.token_types[a.id] = a.special ? kControl : kUserDefined;
  v.merges.reserve(t.bpe.merges().size());
  for (const auto& [a, b] : t.bpe.merges()) {
    if (a.find(' ') != std::string::npos || b.find(' ') != std::string::npos)
      fail("{}: merge '{}' + '{}' contains a space and cannot be written as \"a b\"", t.origin, a, b);
    v.merges.push_back(a + " " + b);
  }
  v.bos_id = t.bos;
  v.eos_id = t.eos.empty() ? -1 : t.eos.front();
  v.unk_id = t.bpe.options().unk_id;
  v.pad_id = t.pad;
  v.add_bos = t.bos >= 0 && std::find(t.prefix.begin(), t.prefix.end(), t.bos) != t.prefix.end();
  v.add_eos = !t.eos.empty() && std::find(t.suffix.begin(), t.suffix.end(), t.eos.front()) != t.suffix.end();
  return v;
}

void Tokenizer::set_chat_template(std::string tmpl) {
  if (impl_) impl_->chat_template = std::move(tmpl);
}

}  // namespace anybit
