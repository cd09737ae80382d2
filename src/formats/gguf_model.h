// GGUF <-> anybit's model representation. Tensors are exposed under their
// Hugging Face names (model.layers.N.self_attn.q_proj.weight, ...) so the model
// code has one naming; the q/k row permutation that llama.cpp applies to Llama
// checkpoints is undone at load and redone at write.
#pragma once
#include <memory>
#include <string>

#include "core/dtype.h"
#include "formats/tensor_store.h"
#include "model/config.h"
#include "tokenizer/tokenizer.h"

namespace anybit {

struct GgufModel {
  ModelConfig config;
  std::shared_ptr<TensorStore> weights;
  GgufVocab vocab;
};

// Throws anybit::Error ("<path>: <problem>") for a malformed or unsupported file.
GgufModel load_gguf_model(const std::string& path);

// Writes a GGUF v3 file llama.cpp can run. `out_dtype` (F32, F16 or BF16) is the type
// of 2-D weight matrices; 1-D tensors (norms, biases) are written as F32.
// `keep_dtype` = true writes every tensor in its stored dtype instead (bit-exact round trip).
void write_gguf_model(const std::string& path, const ModelConfig& config, const TensorStore& weights,
                      const Tokenizer& tokenizer, DType out_dtype, bool keep_dtype);

}  // namespace anybit
