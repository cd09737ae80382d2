// The model against references no one here wrote: Hugging Face transformers'
// outputs for tiny-llama (reference.json) and for the fixture models.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/mapped_file.h"
#include "formats/safetensors.h"
#include "model/llama.h"
#include "runtime/sampler.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace anybit;

namespace {

struct Loaded {
  ModelConfig cfg;
  std::shared_ptr<TensorStore> store;
};

Loaded load_dir(const std::string& dir) {
  Loaded l;
  l.cfg = parse_hf_config(read_text_file(dir + "/config.json"), dir + "/config.json");
  l.store = std::make_shared<TensorStore>();
  l.store->set_origin(dir);
  read_safetensors_dir(dir, *l.store);
  return l;
}

std::vector<std::string> golden_model_dirs() {
  std::vector<std::string> dirs = {std::string(ANYBIT_SOURCE_DIR) + "/models/tiny-llama"};
  for (const char* f : {"qwen2-tiny", "llama3-tiny", "mistral-tiny"}) {
    const std::string d = std::string(ANYBIT_SOURCE_DIR) + "/tests/fixtures/" + f;
    if (fs::exists(d + "/reference.json")) dirs.push_back(d);
  }
  return dirs;
}

std::string reference_path(const std::string& dir) {
  if (fs::exists(dir + "/reference.json")) return dir + "/reference.json";
  return std::string(ANYBIT_SHARED_DIR) + "/models/tiny-llama/reference.json";
}

}  // namespace

TEST(ModelGolden, LogitsAndGreedyMatchTransformers) {
  for (const auto& dir : golden_model_dirs()) {
    SCOPED_TRACE(dir);
    Loaded l = load_dir(dir);
    LlamaModel model(l.cfg, l.store);
    const json ref = json::parse(read_text_file(reference_path(dir)));
    KVCache kv(l.cfg, 64, 16);
    for (const auto& r : ref.at("references")) {
      SCOPED_TRACE(r.at("prompt").get<std::string>());
      std::vector<int32_t> ids = r.at("prompt_ids").get<std::vector<int32_t>>();
      SequenceKV seq;
      ForwardOutput out;
      model.forward({BatchEntry{&seq, ids.data(), int64_t(ids.size()), false}}, kv, out);
      double max_err = 0;
      for (const auto& p : r.at("last_logits_top20"))
        max_err = std::max(max_err, std::fabs(double(out.row(0)[p[0].get<int>()]) - p[1].get<double>()));
      EXPECT_LT(max_err, 2e-3) << "last-position logits differ from the reference top-20";
      if (r.contains("last_logits_full")) {
        const auto full = r["last_logits_full"].get<std::vector<float>>();
        ASSERT_EQ(int64_t(full.size()), out.vocab);
        double e = 0;
        for (size_t i = 0; i < full.size(); ++i) e = std::max(e, std::fabs(double(out.row(0)[i]) - full[i]));
        EXPECT_LT(e, 2e-3) << "full logits differ";
      }
      std::vector<int32_t> greedy;
      const auto want = r.at("greedy_ids").get<std::vector<int32_t>>();
      for (size_t i = 0; i < want.size(); ++i) {
        int32_t id = argmax(out.row(0), out.vocab);
        greedy.push_back(id);
        model.forward({BatchEntry{&seq, &id, 1, false}}, kv, out);
      }
      EXPECT_EQ(greedy, want);
      kv.release(seq);
      EXPECT_EQ(kv.free_blocks(), kv.n_blocks());
    }
  }
}
