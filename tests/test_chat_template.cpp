// Chat templates: the Llama-3, Qwen2 (ChatML) and Mistral templates as published
// in their tokenizer_config.json, ChatML, whitespace control and the Jinja subset.
#include <gtest/gtest.h>

#include "core/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/jinja.h"
#include "tokenizer/tokenizer.h"

namespace anybit {
namespace {

// Meta-Llama-3-8B-Instruct.
const char* kLlama3 =
    R"({% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %})";

// Qwen2-7B-Instruct.
const char* kQwen2 =
    R"({% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})";

// Mistral-7B-Instruct-v0.1/v0.2.
const char* kMistral =
    R"({{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %})";

// Mistral-7B-Instruct-v0.3 style: multi-line with "-" whitespace control, slicing,
// "is defined" and loop.last.
const char* kMistralV3 = R"({%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.last and system_message is defined %}
            {{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + '[/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
)";

TEST(ChatTemplate, Llama3) {
  const std::vector<ChatMessage> msgs = {{"system", "You are helpful."}, {"user", "  Hi!\n"}};
  EXPECT_EQ(render_chat(kLlama3, msgs, true, "<|begin_of_text|>", "<|end_of_text|>"),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(render_chat(kLlama3, {{"user", "x"}}, false, "<B>", "<E>"),
            "<B><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>");
}

TEST(ChatTemplate, Qwen2AddsDefaultSystemPrompt) {
  EXPECT_EQ(render_chat(kQwen2, {{"user", "Hello"}}, true, "", "<|im_end|>"),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render_chat(kQwen2, {{"system", "S"}, {"user", "U"}, {"assistant", "A"}}, false, "", ""),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n");
}

TEST(ChatTemplate, MistralAndItsRoleCheck) {
  const std::vector<ChatMessage> ok = {{"user", "Hi"}, {"assistant", "Hello!"}, {"user", "How are you?"}};
  EXPECT_EQ(render_chat(kMistral, ok, true, "<s>", "</s>"), "<s>[INST] Hi [/INST]Hello!</s>[INST] How are you? [/INST]");
  try {
    render_chat(kMistral, {{"user", "a"}, {"user", "b"}}, true, "<s>", "</s>");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Conversation roles must alternate"), std::string::npos) << e.what();
  }
  EXPECT_THROW(render_chat(kMistral, {{"system", "a"}}, true, "<s>", "</s>"), Error);
}

TEST(ChatTemplate, MistralV3WhitespaceControl) {
  const std::vector<ChatMessage> msgs = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}};
  EXPECT_EQ(render_chat(kMistralV3, msgs, true, "<s>", "</s>"), "<s>[INST] Hi[/INST] Hello</s>[INST] Be brief.\n\nBye[/INST]");
  EXPECT_EQ(render_chat(kMistralV3, {{"user", "Q"}}, true, "<s>", "</s>"), "<s>[INST] Q[/INST]");
}

// Llama-3.1 style (trimmed): defaults via "is defined", reassigning messages with
// a slice, reject/join, "in" on a dict and heavy "-" whitespace control.
const char* kLlama31 = R"({{- bos_token }}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
)";

TEST(ChatTemplate, Llama31Style) {
  EXPECT_EQ(render_chat(kLlama31, {{"system", " Sys "}, {"user", "Hi"}}, true, "<|begin_of_text|>", "<|eot_id|>"),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nSys<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(render_chat(kLlama31, {{"user", "Hi"}}, false, "<B>", ""),
            "<B><|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>");
}

TEST(ChatTemplate, ChatMLDefault) {
  const std::vector<ChatMessage> msgs = {{"system", "S"}, {"user", "U"}};
  EXPECT_EQ(render_chat(default_chatml(), msgs, true, "", ""),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render_chat(default_chatml(), msgs, false, "", ""),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n");
  EXPECT_EQ(ChatTemplate::default_chatml().render(msgs, true, "", ""), render_chat(default_chatml(), msgs, true, "", ""));
  // tiny-llama ships no template: the fallback is ChatML.
  const Tokenizer tok = Tokenizer::from_hf_json_file(std::string(ANYBIT_SHARED_DIR) + "/models/tiny-llama/tokenizer.json");
  EXPECT_EQ(ChatTemplate::for_tokenizer(tok).render({{"user", "U"}}, true, "", ""),
            "<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
  // A template from tokenizer_config.json (the "default" entry of a named list).
  const Tokenizer l2 = Tokenizer::from_hf_json_file(std::string(ANYBIT_SOURCE_DIR) +
                                                    "/tests/fixtures/tokenizer_unit/llama2-style/tokenizer.json");
  EXPECT_EQ(ChatTemplate::for_tokenizer(l2).render({{"user", "U"}, {"assistant", "A"}}, true, l2.bos_token(), l2.eos_token()),
            "<s>[user] U[assistant] A");
}

TEST(ChatTemplate, TrimAndLstripBlocks) {
  const char* t = "{% for m in messages %}\n  {% if m.role == 'user' %}\nU: {{ m.content }}\n  {% else %}\n"
                  "A: {{ m.content }}\n  {% endif %}\n{% endfor %}\n";
  EXPECT_EQ(render_chat(t, {{"user", "hi"}, {"assistant", "yo"}}, false, "", ""), "U: hi\nA: yo\n");
  // "+" keeps the indentation; "-" strips on both sides; comments vanish.
  EXPECT_EQ(render_chat("x\n  {%+ if true %}y{% endif %}", {}, false, "", ""), "x\n  y");
  EXPECT_EQ(render_chat("a  \n {{- 'b' -}} \n c{# note #}d", {}, false, "", ""), "abcd");
}

std::string eval(const std::string& src) {
  jinja::Dict vars = {{"msgs", jinja::Value::make_list({jinja::Value::make_dict({{"role", "user"}, {"content", "Hi"}}),
                                                       jinja::Value::make_dict({{"role", "bot"}, {"content", "Yo"}})})},
                      {"n", jinja::Value(7)}};
  return jinja::Template(src, "test").render(vars);
}

TEST(Jinja, ExpressionsFiltersAndTests) {
  EXPECT_EQ(eval("{{ 'a' ~ 1 ~ none }}"), "a1None");
  EXPECT_EQ(eval("{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 7 / 2 }}"),
            "7 3 -4 1 2 1024 3.5");
  EXPECT_EQ(eval("{{ '  x  ' | trim }}|{{ 'AbC' | upper }}|{{ 'AbC' | lower }}|{{ msgs | length }}|{{ 'héllo' | length }}"),
            "x|ABC|abc|2|5");
  EXPECT_EQ(eval("{{ msgs[0]['role'] }} {{ msgs[1].content }} {{ msgs[-1].role }} {{ msgs[5] is defined }}"),
            "user Yo bot False");
  EXPECT_EQ(eval("{{ undefined_thing is defined }} {{ undefined_thing is not defined }} {{ none is none }}"),
            "False True True");
  EXPECT_EQ(eval("{% if n > 5 and not (n == 8) or false %}big{% elif n > 2 %}mid{% else %}small{% endif %}"), "big");
  EXPECT_EQ(eval("{{ 'yes' if 'ell' in 'hello' else 'no' }} {{ 3 in [1, 2] }} {{ 'role' in msgs[0] }} {{ 4 not in [4] }}"),
            "yes False True False");
  EXPECT_EQ(eval("{{ [1, 2, 3, 4][1:3] }} {{ 'abcdef'[::-2] }} {{ [1, 2, 3][-2:] | join(',') }}"), "[2, 3] fdb 2,3");
  EXPECT_EQ(eval("{{ {'a': 1, 'b': [true, none, 'x\"']} | tojson }}"), R"({"a": 1, "b": [true, null, "x\""]})");
  EXPECT_EQ(eval("{{ x | default('d') }} {{ '' | default('e', true) }} {{ msgs | map(attribute='role') | join('/') }}"),
            "d e user/bot");
  EXPECT_EQ(eval("{{ msgs | selectattr('role', 'equalto', 'bot') | list | length }} {{ n is odd }} {{ 9 is divisibleby 3 }}"),
            "1 True True");
  EXPECT_EQ(eval("{{ ' a b '.strip().split(' ') }} {{ 'Hello'.startswith('He') }} {{ 'x'.upper() + 'Y'.lower() }}"),
            "['a', 'b'] True Xy");
  EXPECT_EQ(eval("{{ 1 < n < 10 }} {{ 1 < n < 5 }} {{ msgs[0].get('nope', 'dflt') }}"), "True False dflt");
  EXPECT_EQ(eval("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}"), "a=1;b=2;");
  // Details checked against Jinja2 3.1: a sign binds tighter than a filter, bool is
  // a number, one trailing newline of the template is dropped, lists repeat.
  EXPECT_EQ(eval("{{ -3 | abs }} {{ true is number }} {{ false is even }} {{ [1] * 2 }}\n"), "3 True True [1, 1]");
  EXPECT_EQ(eval("{{ 0[:2] }}|{{ undefined_thing is iterable }}"), "|True");
}

TEST(Jinja, LoopsSetNamespaceMacros) {
  EXPECT_EQ(eval("{% for m in msgs %}{{ loop.index }}/{{ loop.length }}{{ '|' if not loop.last }}{% endfor %}"), "1/2|2/2");
  EXPECT_EQ(eval("{% for i in range(10) if i is even %}{% if i > 6 %}{% break %}{% endif %}{% if i == 2 %}{% continue %}{% endif %}{{ i }}{% endfor %}"),
            "046");
  EXPECT_EQ(eval("{% for x in [] %}a{% else %}empty{% endfor %}"), "empty");
  // set inside a loop does not leak; a namespace does.
  EXPECT_EQ(eval("{% set c = 0 %}{% set ns = namespace(c=0) %}{% for m in msgs %}{% set c = c + 1 %}"
                 "{% set ns.c = ns.c + 1 %}{% endfor %}{{ c }} {{ ns.c }}"),
            "0 2");
  EXPECT_EQ(eval("{% set who %}W{{ n }}{% endset %}{{ who }}"), "W7");
  EXPECT_EQ(eval("{% macro tag(name, v='x') %}<{{ name }}:{{ v }}>{% endmacro %}{{ tag('a') }}{{ tag('b', v='y') }}"),
            "<a:x><b:y>");
  EXPECT_EQ(eval("{% raw %}{{ not evaluated }}{% endraw %}"), "{{ not evaluated }}");
  EXPECT_EQ(eval("{% for a in [1, 2] %}{% for b in [3, 4] %}{{ loop.index0 }}{% endfor %}{{ loop.index }}{% endfor %}"),
            "011012");
}

void expect_template_error(const std::string& src, const std::string& must_contain) {
  try {
    (void)eval(src);
    ADD_FAILURE() << "no error for " << src;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(must_contain), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_EQ(msg.rfind("test", 0), 0u) << msg;  // names the origin
  }
}

TEST(Jinja, Errors) {
  expect_template_error("{% if true %}x", "endif");
  expect_template_error("{{ 'abc' ", "unclosed");
  expect_template_error("{% frobnicate %}", "frobnicate");
  expect_template_error("{{ 1 + }}", "expected an expression");
  expect_template_error("{{ 'x' | nosuchfilter }}", "nosuchfilter");
  expect_template_error("{{ raise_exception('boom') }}", "boom");
  expect_template_error("{{ 1 / 0 }}", "division by zero");
  expect_template_error("{{ 'a' - 1 }}", "unsupported operands");
  expect_template_error("\n\n{% endfor %}", "line 3");
  expect_template_error("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "too deep");
}

}  // namespace
}  // namespace anybit
