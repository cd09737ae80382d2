#include "tokenizer/chat_template.h"

#include "tokenizer/jinja.h"
#include "tokenizer/tokenizer.h"

namespace anybit {

ChatTemplate::ChatTemplate(const std::string& source, const std::string& origin)
    : tmpl_(std::make_unique<jinja::Template>(source, origin)) {}
ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                 const std::string& bos_token, const std::string& eos_token) const {
  jinja::List msgs;
  msgs.reserve(messages.size());
  for (const ChatMessage& m : messages)
    msgs.push_back(jinja::Value::make_dict({{"role", jinja::Value(m.role)}, {"content", jinja::Value(m.content)}}));
  const jinja::Dict vars = {{"messages", jinja::Value::make_list(std::move(msgs))},
                            {"add_generation_prompt", jinja::Value(add_generation_prompt)},
                            {"bos_token", jinja::Value(bos_token)},
                            {"eos_token", jinja::Value(eos_token)}};
  return tmpl_->render(vars);
}

ChatTemplate ChatTemplate::for_tokenizer(const Tokenizer& tok) {
  if (tok.chat_template().empty()) return default_chatml();
  return ChatTemplate(tok.chat_template(), "chat template");
}

ChatTemplate ChatTemplate::default_chatml() { return ChatTemplate(::anybit::default_chatml(), "default ChatML template"); }

std::string render_chat(const std::string& template_source, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt, const std::string& bos_token, const std::string& eos_token) {
  return ChatTemplate(template_source).render(messages, add_generation_prompt, bos_token, eos_token);
}

const std::string& default_chatml() {
  static const std::string t =
      "{% for message in messages %}"
      "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
      "{% endfor %}"
      "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  return t;
}

}  // namespace anybit
