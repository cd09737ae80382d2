#include "formats/model_loader.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "formats/gguf_model.h"
#include "formats/quant_checkpoint.h"
#include "formats/safetensors.h"

namespace anybit {

namespace fs = std::filesystem;

namespace {

// Reads every page of every tensor once so that a slow disk shows up as a
// progress bar at load rather than as a stall in the first token.
void prefault(const TensorStore& store, const LoadProgress& progress) {
  const size_t total = store.total_bytes();
  size_t done = 0;
  volatile uint8_t sink = 0;
  for (const auto& [_, t] : store.all()) {
    if (t.dtype == DType::QBITS) continue;  // data is a QuantizedWeight already in memory
    const auto* p = static_cast<const uint8_t*>(t.data);
    for (size_t off = 0; off < t.nbytes; off += 4096) sink ^= p[off];
    done += t.nbytes;
    if (progress) progress(done, total);
  }
  (void)sink;
}

ModelFiles load_hf_folder(const std::string& dir) {
  ModelFiles m;
  m.path = dir;
  m.format = "safetensors";
  const fs::path config = fs::path(dir) / "config.json";
  if (!fs::exists(config)) fail("{}: not a model folder (no config.json)", dir);
  m.config = parse_hf_config(read_text_file(config.string()), config.string());
  const fs::path gen = fs::path(dir) / "generation_config.json";
  if (fs::exists(gen)) merge_generation_config(read_text_file(gen.string()), m.config, gen.string());
  auto store = std::make_shared<TensorStore>();
  store->set_origin(dir);
  read_safetensors_dir(dir, *store);
  m.weights = std::move(store);
  const fs::path tok = fs::path(dir) / "tokenizer.json";
  if (!fs::exists(tok)) fail("{}: no tokenizer.json in the model folder", dir);
  m.tokenizer = Tokenizer::from_hf_json_file(tok.string());
  return m;
}

ModelFiles load_gguf(const std::string& path) {
  GgufModel g = load_gguf_model(path);
  ModelFiles m;
  m.path = path;
  m.format = "gguf";
  m.config = std::move(g.config);
  m.weights = std::move(g.weights);
  m.tokenizer = Tokenizer::from_gguf_vocab(g.vocab, path);
  return m;
}

}  // namespace

ModelFiles load_model_files(const std::string& path, const LoadProgress& progress) {
  std::error_code ec;
  ModelFiles m;
  if (fs::is_directory(path, ec)) {
    m = is_quant_checkpoint(path) ? load_quant_folder(path) : load_hf_folder(path);
  } else if (fs::is_regular_file(path, ec)) {
    m = load_gguf(path);
  } else {
    fail("{}: no such model file or folder", path);
  }
  // The tokenizer's special ids complete what the config did not say.
  if (m.config.bos_id < 0) m.config.bos_id = m.tokenizer.bos_id();
  for (int32_t id : m.tokenizer.eos_ids())
    if (std::find(m.config.eos_ids.begin(), m.config.eos_ids.end(), id) == m.config.eos_ids.end())
      m.config.eos_ids.push_back(id);
  prefault(*m.weights, progress);
  return m;
}

}  // namespace anybit
