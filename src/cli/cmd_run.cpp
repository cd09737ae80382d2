// `anybit run` (one prompt, streamed to stdout) and `anybit chat` (interactive).
#include <cstdio>
#include <iostream>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "runtime/generate.h"
#include "tokenizer/chat_template.h"

namespace anybit::cli {

namespace {

struct RunArgs {
  ModelArgs model;
  std::string prompt;
  int64_t n = 128;
  SamplingArgs sampling;
  std::vector<std::string> stop;
  bool ignore_eos = false;
};

int run_prompt(const RunArgs& a) {
  auto engine = load_engine(a.model);
  GenerateOptions g;
  g.max_new_tokens = a.n;
  g.sampling = a.sampling.params();
  g.stop = a.stop;
  g.ignore_eos = a.ignore_eos;
  const auto ids = engine->tokenizer().encode(a.prompt, true);
  auto r = generate(*engine, ids, g, [](std::string_view s) {
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
    return true;
  });
  std::fputc('\n', stdout);
  spdlog::info("prompt {} tokens in {:.3f}s ({:.1f} t/s), generated {} tokens in {:.3f}s ({:.1f} t/s), finish: {}",
               r.prompt_tokens, r.prefill_seconds, double(r.prompt_tokens) / std::max(r.prefill_seconds, 1e-9),
               r.ids.size(), r.decode_seconds, double(r.ids.size()) / std::max(r.decode_seconds, 1e-9),
               r.finish_reason);
  return 0;
}

struct ChatArgs {
  ModelArgs model;
  int64_t n = 512;
  SamplingArgs sampling;
  std::string system;
};

int run_chat(const ChatArgs& a) {
  auto engine = load_engine(a.model);
  const Tokenizer& tok = engine->tokenizer();
  ChatTemplate tmpl = tok.chat_template().empty() ? ChatTemplate::default_chatml() : ChatTemplate(tok.chat_template());
  if (tok.chat_template().empty()) spdlog::info("the model has no chat template; using ChatML");
  std::vector<ChatMessage> messages;
  if (!a.system.empty()) messages.push_back({"system", a.system});
  GenerateOptions g;
  g.max_new_tokens = a.n;
  g.sampling = a.sampling.params();
  std::fprintf(stderr, "chat with %s — empty line or Ctrl-D to quit\n", engine->files().path.c_str());
  std::string line;
  while (true) {
    std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line) || line.empty()) break;
    messages.push_back({"user", line});
    const std::string prompt = tmpl.render(messages, true, tok.bos_token(), tok.eos_token());
    // The template writes BOS itself when the model wants it.
    auto ids = tok.encode(prompt, false);
    if (int64_t(ids.size()) + 1 >= engine->max_context()) {
      std::fprintf(stderr, "the conversation no longer fits the context; starting over\n");
      messages.erase(messages.begin() + (a.system.empty() ? 0 : 1), messages.end());
      continue;
    }
    auto r = generate(*engine, ids, g, [](std::string_view s) {
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
      return true;
    });
    std::fputc('\n', stdout);
    messages.push_back({"assistant", r.text});
  }
  return 0;
}

}  // namespace

void register_run(CLI::App& app) {
  auto* a = new RunArgs();  // lives for the process
  auto* sub = app.add_subcommand("run", "Generate text from a prompt (text only on stdout)");
  a->model.add(sub);
  sub->add_option("-p,--prompt", a->prompt, "Prompt text")->required();
  sub->add_option("-n,--n-predict", a->n, "Tokens to generate")->check(CLI::Range(int64_t(0), int64_t(1) << 30));
  a->sampling.add(sub);
  sub->add_option("--stop", a->stop, "Stop string (repeatable)");
  sub->add_flag("--ignore-eos", a->ignore_eos, "Keep generating after the end-of-sequence token");
  add_command(sub, [a] { return run_prompt(*a); });
}

void register_chat(CLI::App& app) {
  auto* a = new ChatArgs();
  auto* sub = app.add_subcommand("chat", "Interactive chat using the model's chat template");
  a->model.add(sub);
  sub->add_option("-n,--n-predict", a->n, "Max tokens per reply");
  sub->add_option("--system", a->system, "System prompt");
  a->sampling.add(sub);
  add_command(sub, [a] { return run_chat(*a); });
}

}  // namespace anybit::cli
