// Loads a model from a Hugging Face folder (config.json + *.safetensors +
// tokenizer.json) or a GGUF file, into one representation.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "formats/tensor_store.h"
#include "model/config.h"
#include "tokenizer/tokenizer.h"

namespace anybit {

struct ModelFiles {
  std::string path;
  std::string format;  // "safetensors" | "gguf"
  ModelConfig config;
  std::shared_ptr<TensorStore> weights;
  Tokenizer tokenizer;
};

// progress(done_bytes, total_bytes) is called while tensors are read/checked.
using LoadProgress = std::function<void(size_t, size_t)>;

ModelFiles load_model_files(const std::string& path, const LoadProgress& progress = nullptr);

}  // namespace anybit
