// `anybit perplexity`: the reference protocol (whole file, no BOS, non-overlapping windows).
#include <cstdio>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/mapped_file.h"
#include "core/progress.h"
#include "runtime/perplexity.h"

namespace anybit::cli {

namespace {
struct PplArgs {
  ModelArgs model;
  std::string file;
  int64_t ctx = 512;
  std::string kl_reference;
};

int run_ppl(const PplArgs& a) {
  ModelArgs m = a.model;
  if (m.ctx == 0) m.ctx = a.ctx;
  auto engine = load_engine(m);
  const std::string text = read_text_file(a.file);
  const auto ids = engine->tokenizer().encode(text, false);
  spdlog::info("{}: {} tokens, windows of {}", a.file, ids.size(), a.ctx);
  std::unique_ptr<Engine> ref;
  if (!a.kl_reference.empty()) {
    ModelArgs rm = m;
    rm.path = a.kl_reference;
    ref = load_engine(rm);
  }
  ProgressBar bar("perplexity");
  auto r = perplexity(
      *engine, ids, a.ctx, [&](int64_t d, int64_t t) { bar.update(double(d), double(t), " windows"); }, ref.get());
  bar.finish();
  if (r.has_reference)
    std::printf("reference_ppl = %.4f\nkl = %.6f\ntop1_agree = %.4f\n", r.ref_ppl, r.mean_kl, r.top1_agree);
  std::printf("tokens = %lld\nwindows = %lld\nmean_nll = %.6f\nppl = %.4f\n", (long long)r.scored_tokens,
              (long long)r.windows, r.mean_nll, r.ppl);
  return 0;
}
}  // namespace

void register_perplexity(CLI::App& app) {
  auto* a = new PplArgs();
  auto* sub = app.add_subcommand("perplexity", "Perplexity of a text file");
  a->model.add(sub);
  sub->add_option("-f,--file", a->file, "Text file")->required();
  sub->add_option("--ctx", a->ctx, "Window length in tokens")->check(CLI::Range(int64_t(2), int64_t(1) << 20));
  sub->add_option("--kl-reference", a->kl_reference,
                  "Also run this model (e.g. the unquantized original) on the same windows and print the mean "
                  "KL(reference || model) per token, the top-1 agreement and the reference's perplexity");
  add_command(sub, [a] { return run_ppl(*a); });
}

}  // namespace anybit::cli
