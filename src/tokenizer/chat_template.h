// Chat templates: a Jinja subset interpreter for the templates Hugging Face
// models ship in tokenizer_config.json (Llama-3, Qwen2/ChatML, Mistral).
// (Interface fixed by the CLI/server; the implementation lives in chat_template.cpp.)
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace anybit {

struct ChatMessage {
  std::string role;     // "system" | "user" | "assistant" | ...
  std::string content;
};

class ChatTemplate {
 public:
  explicit ChatTemplate(const std::string& source);  // throws anybit::Error on a syntax error
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;
  ~ChatTemplate();
  static ChatTemplate default_chatml();

  // Throws anybit::Error when the template raises (raise_exception) or fails.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                     const std::string& bos_token, const std::string& eos_token) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace anybit
