// GGUF v3 writer: metadata in insertion order, tensors whose bytes are produced
// only when the file is written (so a conversion never holds two copies of a model).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "formats/gguf_reader.h"
#include "formats/tensor_store.h"
#include "model/config.h"
#include "tokenizer/tokenizer.h"

namespace anybit {

class GgufWriter {
 public:
  explicit GgufWriter(size_t alignment = 32);

  // A key set twice keeps its first position and takes the new value.
  void set(const std::string& key, GgufValue value);

  // `fill` writes exactly `nbytes` bytes to dst when the file is written.
  using Fill = std::function<void(uint8_t* dst)>;
  void add_tensor(const std::string& name, uint32_t ggml_type, const std::vector<int64_t>& shape, Fill fill);
  // Copies `data` (which must stay valid until write()) as stored.
  void add_tensor(const std::string& name, uint32_t ggml_type, const std::vector<int64_t>& shape, const void* data,
                  size_t nbytes);

  // Writes PATH.tmp and renames it over PATH, so a failed write leaves no half file.
  void write(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    uint32_t ggml_type;
    std::vector<int64_t> shape;  // row-major
    size_t nbytes;
    Fill fill;
  };
  size_t alignment_;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<Tensor> tensors_;
};

// The model writer behind write_gguf_model (gguf_model.h), taking the vocabulary
// directly so a file can be produced without a full tokenizer.
void write_gguf_model_vocab(const std::string& path, const ModelConfig& config, const TensorStore& weights,
                            const GgufVocab& vocab, DType out_dtype, bool keep_dtype);

// llama.cpp stores Llama q_proj/k_proj rows reordered so that its RoPE, which
// rotates adjacent pairs (x0,x1),(x2,x3)..., matches Hugging Face's rotate-half
// RoPE on (x0,x_{d/2}),(x1,x_{d/2+1}).... Within each head of `head_dim` rows,
// to_gguf moves HF row j*half + i (j in {0,1}) to 2*i + j; from_gguf undoes it.
// Rows are `row_bytes` wide so any row-wise storage type (incl. Q8_0) works, and
// 1-D biases are the case row_bytes = element size.
void permute_qk_rows(const uint8_t* src, uint8_t* dst, int64_t n_heads, int64_t head_dim, size_t row_bytes,
                     bool to_gguf);

}  // namespace anybit
