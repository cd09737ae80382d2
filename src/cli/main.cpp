// anybit: one binary, sub-commands run/chat/perplexity/bench/convert.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  spdlog::set_default_logger(spdlog::stderr_color_mt("anybit"));
  spdlog::set_pattern("%^[%l]%$ %v");
  CLI::App app{"anybit: LLM inference at any bit width"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "anybit 0.1.0");
  anybit::cli::register_commands(app);
  try {
    app.parse(argc, argv);
    return anybit::cli::run_selected(app);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const anybit::Error& e) {
    std::fprintf(stderr, "anybit: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "anybit: error: %s\n", e.what());
    return 1;
  }
}
