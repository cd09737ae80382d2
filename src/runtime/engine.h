// A loaded model ready to run: weights, tokenizer, the model and its paged KV cache.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "formats/model_loader.h"
#include "model/kv_cache.h"
#include "model/llama.h"
#include "runtime/device.h"

namespace anybit {

struct EngineOptions {
  int64_t max_context = 0;  // tokens per sequence; 0 = the model's max_position_embeddings
  int64_t max_sequences = 1;  // KV is sized for this many full-length sequences
  int threads = 0;          // 0 = all cores
  std::string device = "auto";  // cpu | cuda | auto (cuda when a GPU is visible)
  // Element type of the KV cache: F32, or on the GPU also F16, BF16, I8 (int8 rows with a
  // scale each). Unset: f16 on the GPU (llama.cpp's and vLLM's default; perplexity within
  // 0.001% of f32 on tiny-llama), f32 on the CPU.
  std::optional<DType> kv_dtype;
};

class Engine {
 public:
  Engine(ModelFiles files, const EngineOptions& opts);
  static std::unique_ptr<Engine> load(const std::string& path, const EngineOptions& opts,
                                      const LoadProgress& progress = nullptr);

  const ModelConfig& config() const { return files_.config; }
  const Tokenizer& tokenizer() const { return files_.tokenizer; }
  const ModelFiles& files() const { return files_; }
  // The backend that runs forward passes (CPU or CUDA, per EngineOptions::device).
  ModelBackend& model() { return *backend_; }
  // The CPU model, always present (calibration observers, CPU-only tools).
  LlamaModel& cpu_model() { return *model_; }
  Device device() const { return device_; }
  KVCache& kv() { return *kv_; }
  int64_t max_context() const { return max_context_; }

 private:
  ModelFiles files_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<ModelBackend> backend_;
  Device device_ = Device::Cpu;
  std::unique_ptr<KVCache> kv_;
  int64_t max_context_ = 0;
};

// Sets the number of kernel threads (OpenMP) for the whole process.
void set_thread_count(int threads);

}  // namespace anybit
