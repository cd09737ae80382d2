#include "cli/common.h"

#include <spdlog/spdlog.h>

#include <chrono>

#include "cli/commands.h"
#include "core/error.h"
#include "core/progress.h"
#include "kernels/dispatch.h"

namespace anybit::cli {

void ModelArgs::add(CLI::App* sub) {
  sub->add_option("-m,--model", path, "HF model folder or GGUF file (default: the embedded tiny-llama)");
  sub->add_option("-t,--threads", threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 1024));
  sub->add_option("-c,--ctx-size", ctx, "Context length (default: the model's)")->check(CLI::Range(int64_t(0), int64_t(1) << 24));
  sub->add_option("--device", device, "cpu, cuda or auto (default: cuda when a GPU is visible)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  sub->add_option("--kv-dtype", kv_dtype,
                  "KV cache element type: auto (f16 on the GPU, f32 on the CPU), f32, or on the GPU f16, bf16, "
                  "i8 (int8 rows with a scale each)")
      ->check(CLI::IsMember({"auto", "f32", "f16", "bf16", "i8"}));
}

void SamplingArgs::add(CLI::App* sub) {
  sub->add_option("--temp", temp, "Temperature (0 = greedy)");
  sub->add_option("--top-k", top_k, "Top-k (0 = off)");
  sub->add_option("--top-p", top_p, "Top-p / nucleus (1 = off)");
  sub->add_option("--min-p", min_p, "Min-p (0 = off)");
  sub->add_option("--repeat-penalty", repeat_penalty, "Repetition penalty (1 = off)");
  sub->add_option("--seed", seed, "Random seed");
}

DType parse_float_dtype(const std::string& s) {
  if (s == "f32") return DType::F32;
  if (s == "f16") return DType::F16;
  if (s == "bf16") return DType::BF16;
  fail("--dtype must be f32, f16 or bf16 (got '{}')", s);
}

std::optional<DType> parse_kv_dtype(const std::string& s) {
  if (s == "auto") return std::nullopt;
  if (s == "i8") return DType::I8;
  if (s == "f32" || s == "f16" || s == "bf16") return parse_float_dtype(s);
  fail("--kv-dtype must be auto, f32, f16, bf16 or i8 (got '{}')", s);
}

SamplingParams SamplingArgs::params() const {
  SamplingParams p;
  p.temperature = temp;
  p.top_k = top_k;
  p.top_p = top_p;
  p.min_p = min_p;
  p.repetition_penalty = repeat_penalty;
  p.seed = seed;
  p.validate();
  return p;
}

std::unique_ptr<Engine> load_engine(const ModelArgs& a, int64_t max_sequences) {
  const std::string path = model_path_or_default(a.path);
  const auto t0 = std::chrono::steady_clock::now();
  ProgressBar bar("loading");
  auto files = load_model_files(path, [&](size_t done, size_t total) {
    if (total > (size_t(256) << 20)) bar.update(double(done) / 1048576.0, double(total) / 1048576.0, " MiB");
  });
  bar.finish();
  EngineOptions o;
  o.threads = a.threads;
  o.max_context = a.ctx;
  o.max_sequences = max_sequences;
  o.device = a.device;
  o.kv_dtype = parse_kv_dtype(a.kv_dtype);
  auto e = std::make_unique<Engine>(std::move(files), o);
  spdlog::info("loaded {} ({}, {} layers, {:.1f} MiB) in {:.2f}s, backend: {}", path, e->files().format,
               e->config().n_layers, double(e->model().weight_bytes()) / 1048576.0,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
               e->model().name());
  return e;
}

}  // namespace anybit::cli
