#include "cli/commands.h"

#include <map>

namespace anybit::cli {

namespace {
std::map<CLI::App*, Runner>& runners() {
  static std::map<CLI::App*, Runner> r;
  return r;
}
}  // namespace

void add_command(CLI::App* sub, Runner run) { runners()[sub] = std::move(run); }

void register_commands(CLI::App& app) {
  register_run(app);
  register_chat(app);
  register_serve(app);
  register_perplexity(app);
  register_bench(app);
  register_convert(app);
  register_quantize(app);
  register_finetune(app);
}

int run_selected(CLI::App& app) {
  for (auto& [sub, run] : runners())
    if (sub->parsed()) return run();
  return 2;
}

std::string model_path_or_default(const std::string& m) { return m.empty() ? ANYBIT_DEFAULT_MODEL : m; }

}  // namespace anybit::cli
