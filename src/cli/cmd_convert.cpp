// `anybit convert`: write a model (or a named random shape) as GGUF for llama.cpp.
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "formats/gguf_model.h"
#include "runtime/random_model.h"

namespace anybit::cli {

namespace {
struct ConvertArgs {
  std::string model, to = "gguf", out, dtype = "keep", shape;
};

int run_convert(const ConvertArgs& a) {
  if (a.to != "gguf") fail("--to {}: only gguf is supported", a.to);
  bool keep = a.dtype == "keep";
  DType dt = DType::F32;
  if (a.dtype == "f16") dt = DType::F16;
  else if (a.dtype == "bf16") dt = DType::BF16;
  else if (a.dtype != "f32" && !keep) fail("--dtype must be keep, f32, f16 or bf16 (got '{}')", a.dtype);
  ModelFiles m;
  if (!a.shape.empty()) {
    // Random weights of a named shape, with the embedded model's tokenizer (same 8192 vocab),
    // so that llama.cpp can be benchmarked on exactly the weights anybit uses.
    m = make_random_model(named_shape(a.shape), keep ? DType::BF16 : dt, 1234);
    m.tokenizer = load_model_files(model_path_or_default("")).tokenizer;
  } else {
    m = load_model_files(model_path_or_default(a.model));
  }
  write_gguf_model(a.out, m.config, *m.weights, m.tokenizer, dt, keep);
  spdlog::info("wrote {}", a.out);
  return 0;
}
}  // namespace

void register_convert(CLI::App& app) {
  auto* a = new ConvertArgs();
  auto* sub = app.add_subcommand("convert", "Convert a model to GGUF (llama.cpp)");
  sub->add_option("-m,--model", a->model, "HF model folder or GGUF file (default: embedded model)");
  sub->add_option("--shape", a->shape, "Write a named random-weight shape instead (llama-1b, ...)");
  sub->add_option("--to", a->to, "Output format (gguf)");
  sub->add_option("-o,--output", a->out, "Output file")->required();
  sub->add_option("--dtype", a->dtype, "Matrix dtype: keep (as stored, bit-exact), f32, f16, bf16");
  add_command(sub, [a] { return run_convert(*a); });
}

}  // namespace anybit::cli
