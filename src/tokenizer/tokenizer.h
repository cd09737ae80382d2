// Tokenizers: byte-level BPE from Hugging Face tokenizer.json, and the
// SentencePiece-style / GPT-2-style vocabularies stored in GGUF metadata.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace anybit {

// What a GGUF file stores under tokenizer.ggml.* (filled by the GGUF reader).
struct GgufVocab {
  std::string model;  // "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE)
  std::string pre;    // tokenizer.ggml.pre, e.g. "gpt-2", "llama-bpe", "qwen2"
  std::vector<std::string> tokens;
  std::vector<float> scores;       // may be empty
  std::vector<int32_t> token_types;  // 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
  std::vector<std::string> merges;   // "a b" pairs, gpt2 only
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  int32_t pad_id = -1;
  bool add_bos = true;
  bool add_eos = false;
  bool add_space_prefix = true;  // tokenizer.ggml.add_space_prefix ("llama" model only)
};

class TokenizerImpl;

class Tokenizer {
 public:
  // Reads tokenizer.json (and, when present next to it, tokenizer_config.json for
  // the chat template and bos/eos names). Throws anybit::Error naming the file.
  static Tokenizer from_hf_json_file(const std::string& tokenizer_json_path);
  static Tokenizer from_gguf_vocab(const GgufVocab& vocab, const std::string& origin);

  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // add_special: apply the post-processor (BOS for Llama). Special tokens written
  // literally in `text` (e.g. "<|end_of_text|>") are recognised as added tokens.
  std::vector<int32_t> encode(std::string_view text, bool add_special) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = true) const;
  // The raw bytes a token stands for ("" for special tokens when skip_special).
  std::string token_bytes(int32_t id, bool skip_special = true) const;

  int32_t vocab_size() const;
  int32_t bos_id() const;                   // -1 when none
  const std::vector<int32_t>& eos_ids() const;
  bool is_special(int32_t id) const;
  int32_t token_to_id(std::string_view token) const;  // -1 when absent
  const std::string& chat_template() const;           // "" when none
  // GGUF readers set the template stored under tokenizer.chat_template.
  void set_chat_template(std::string tmpl);
  const std::string& bos_token() const;
  const std::string& eos_token() const;

  // What a GGUF writer needs to store this vocabulary (gpt2 model only for HF BPE).
  GgufVocab to_gguf_vocab() const;

 private:
  std::unique_ptr<TokenizerImpl> impl_;
};

// Turns a stream of token ids into text without ever emitting a broken UTF-8
// sequence: bytes of an incomplete character are held until it completes.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
  std::string push(int32_t id);
  std::string flush();  // whatever is pending (invalid bytes become U+FFFD)

 private:
  const Tokenizer& tok_;
  std::string pending_;
};

}  // namespace anybit
