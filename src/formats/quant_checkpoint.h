// anybit's quantized checkpoint: a model folder (docs/FORMAT.md) holding
//   config.json, tokenizer files, quantization_config.json (the marker and a summary),
//   model.safetensors (or model-0000i-of-0000n.safetensors shards) where every quantized
//   matrix W is stored as W.qcodes (U8), W.qscales, W.qzeros (asymmetric only) and
//   W.qinput_scale (AWQ only), described by a JSON string under __metadata__[W].
// Loading gives a TensorStore whose quantized entries are QBITS views: `data` points at a
// QuantizedWeight the store keeps alive, shape is {rows, cols}.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "formats/model_loader.h"
#include "formats/tensor_store.h"
#include "model/config.h"
#include "quant/quantized_weight.h"

namespace anybit {

inline constexpr const char* kQuantConfigFile = "quantization_config.json";
inline constexpr const char* kQuantFormatName = "anybit-qbits";
inline constexpr int kQuantFormatVersion = 1;

// True when `dir` is a folder with a quantization_config.json.
bool is_quant_checkpoint(const std::string& dir);

// Quantizer names a checkpoint may carry (anything else is rejected at load).
bool is_known_quantizer(const std::string& name);

// Reads the quantized tensors of one .safetensors file into `store` (throws "<path>: ...").
void read_quant_safetensors(const std::string& path, TensorStore& store);

// Loads a whole quantized folder: config, tokenizer, weights.
ModelFiles load_quant_folder(const std::string& dir);

// Owns `w` for the life of `store` and adds it as a QBITS view named `name`.
void add_quantized(TensorStore& store, const std::string& name, std::shared_ptr<QuantizedWeight> w);
// The QuantizedWeight behind a QBITS view (throws for any other dtype).
const QuantizedWeight& quantized_of(const TensorView& t);

struct QuantWriteOptions {
  DType scale_dtype = DType::F16;     // on-disk scales and zeros: F16, BF16 or F32
  size_t shard_bytes = size_t(4) << 30;
  nlohmann::json summary;             // written into quantization_config.json
  std::string tokenizer_source;       // HF folder whose tokenizer files are copied ("" = none)
};

// Writes the folder `dir` (created if needed; existing model files in it are replaced).
// `tokenizer` is written as gguf_vocab.json when opts.tokenizer_source is empty.
void write_quant_folder(const std::string& dir, const ModelConfig& config, const TensorStore& weights,
                        const Tokenizer& tokenizer, const QuantWriteOptions& opts);

// HF-style config.json text for `config` (what parse_hf_config reads back).
std::string config_to_hf_json(const ModelConfig& config);

}  // namespace anybit
