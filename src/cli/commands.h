// The CLI's sub-commands. Each registers its options on the CLI11 app and runs
// when selected; all print results to stdout and logs/progress to stderr.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace anybit::cli {

void register_commands(CLI::App& app);
int run_selected(CLI::App& app);

// Registration helpers, one per command file.
using Runner = std::function<int()>;
void add_command(CLI::App* sub, Runner run);
void register_run(CLI::App& app);
void register_chat(CLI::App& app);
void register_serve(CLI::App& app);
void register_perplexity(CLI::App& app);
void register_bench(CLI::App& app);
void register_convert(CLI::App& app);
void register_quantize(CLI::App& app);
void register_finetune(CLI::App& app);

// Resolves -m (empty = the embedded default model).
std::string model_path_or_default(const std::string& m);

}  // namespace anybit::cli
