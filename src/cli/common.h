// Options shared by several sub-commands.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "runtime/engine.h"
#include "runtime/sampler.h"

namespace anybit::cli {

struct ModelArgs {
  std::string path;  // empty = embedded default model
  int threads = 0;
  int64_t ctx = 0;
  std::string device = "auto";  // cpu | cuda | auto
  std::string kv_dtype = "auto";  // auto | f32 | f16 | bf16 | i8 (KV cache; auto: f16 on GPU, f32 on CPU)
  void add(CLI::App* sub);
};

struct SamplingArgs {
  float temp = 0.0f, top_p = 1.0f, min_p = 0.0f, repeat_penalty = 1.0f;
  int32_t top_k = 0;
  uint64_t seed = 0;
  SamplingParams params() const;
  void add(CLI::App* sub);
};

// Loads the model with a progress bar on stderr for large files.
// "f32" | "f16" | "bf16" (the --dtype of random --shape models); anything else fails.
DType parse_float_dtype(const std::string& s);
std::optional<DType> parse_kv_dtype(const std::string& s);  // auto (nullopt) | f32 | f16 | bf16 | i8

std::unique_ptr<Engine> load_engine(const ModelArgs& a, int64_t max_sequences = 1);

}  // namespace anybit::cli
