// Chat prompts from a model's Jinja chat template (tokenizer_config.json's
// chat_template), with ChatML as the fallback for models that ship none.
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace anybit {

namespace jinja {
class Template;
}
class Tokenizer;

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

class ChatTemplate {
 public:
  // Parses once; throws anybit::Error "<origin>: line N: ..." on a syntax error.
  explicit ChatTemplate(const std::string& source, const std::string& origin = "chat template");
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

  // The template's raise_exception(...) and evaluation errors throw anybit::Error.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                     const std::string& bos_token, const std::string& eos_token) const;

  // The tokenizer's template, or ChatML when it has none.
  static ChatTemplate for_tokenizer(const Tokenizer& tok);
  // The parsed ChatML template (source: the free function default_chatml()).
  static ChatTemplate default_chatml();

 private:
  std::unique_ptr<jinja::Template> tmpl_;
};

// One-shot parse and render.
std::string render_chat(const std::string& template_source, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt, const std::string& bos_token, const std::string& eos_token);

// ChatML: <|im_start|>role\ncontent<|im_end|>\n per message, then
// <|im_start|>assistant\n when a generation prompt is asked for.
const std::string& default_chatml();

}  // namespace anybit
