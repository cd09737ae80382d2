// Malformed safetensors files and configs fail with a one-line error naming the file.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"
#include "formats/safetensors.h"
#include "model/config.h"
#include "model/llama.h"
#include "test_util.h"

using namespace anybit;
using json = nlohmann::json;

namespace {

std::string safetensors_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

// Expects `f` to throw anybit::Error whose message contains every needle.
template <typename F>
void expect_error(F f, std::initializer_list<std::string> needles) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "multi-line error: " << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

const char* kConfig = R"({"model_type":"llama","hidden_size":64,"num_hidden_layers":1,"num_attention_heads":4,
  "num_key_value_heads":2,"intermediate_size":128,"vocab_size":32,"rms_norm_eps":1e-5})";

}  // namespace

TEST(Safetensors, ReadsValidFile) {
  test::TempDir tmp;
  const std::string f = tmp.file("m.safetensors");
  float vals[6] = {1, 2, 3, 4, 5, 6};
  test::write_file(f, safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"__metadata__":{"x":"y"}})",
                                        std::string(reinterpret_cast<char*>(vals), 24)));
  TensorStore s;
  read_safetensors_file(f, s);
  const TensorView& t = s.get("a", {2, 3});
  EXPECT_EQ(t.dtype, DType::F32);
  EXPECT_EQ(static_cast<const float*>(t.data)[5], 6.0f);
}

TEST(Safetensors, MalformedFilesFailCleanly) {
  test::TempDir tmp;
  const std::string f = tmp.file("bad.safetensors");
  const std::string ok_header = R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})";
  struct Case {
    std::string bytes, needle;
  } cases[] = {
      {"", "truncated"},
      {std::string("\x05\0\0", 3), "truncated"},
      {safetensors_bytes(ok_header, std::string(10, '\0')), "outside"},          // data cut short
      {safetensors_bytes(ok_header, "").substr(0, 20), "truncated"},             // header cut short
      {safetensors_bytes("{not json", ""), "corrupted"},
      {safetensors_bytes("[1,2]", ""), "not a JSON object"},
      {safetensors_bytes(R"({"a":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})", "x"), "unsupported dtype"},
      {safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", std::string(24, '\0')), "need 24"},
      {safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", std::string(8, '\0')), "outside"},
      {safetensors_bytes(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", std::string(8, '\0')), "negative"},
      {safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                         std::string(12, '\0')), "overlap"},
      {safetensors_bytes(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0')), "malformed"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.needle);
    test::write_file(f, c.bytes);
    TensorStore s;
    expect_error([&] { read_safetensors_file(f, s); }, {f, c.needle});
  }
  expect_error([&] { TensorStore s; read_safetensors_file(tmp.file("absent.safetensors"), s); }, {"absent.safetensors", "cannot open"});
}

TEST(Safetensors, ShardedIndex) {
  test::TempDir tmp;
  float a[2] = {1, 2}, b[3] = {3, 4, 5};
  test::write_file(tmp.file("s1.safetensors"), safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                                                                 std::string(reinterpret_cast<char*>(a), 8)));
  test::write_file(tmp.file("s2.safetensors"), safetensors_bytes(R"({"b":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})",
                                                                 std::string(reinterpret_cast<char*>(b), 12)));
  test::write_file(tmp.file("model.safetensors.index.json"),
                   R"({"metadata":{},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})");
  TensorStore s;
  read_safetensors_dir(tmp.path().string(), s);
  EXPECT_EQ(static_cast<const float*>(s.get("b").data)[2], 5.0f);
  EXPECT_EQ(static_cast<const float*>(s.get("a").data)[0], 1.0f);

  test::write_file(tmp.file("model.safetensors.index.json"), R"({"weight_map":{"a":"../etc/passwd"}})");
  TensorStore s2;
  expect_error([&] { read_safetensors_dir(tmp.path().string(), s2); }, {"index.json", "leaves"});
}

TEST(HfConfig, ParsesFamiliesAndRopeForms) {
  ModelConfig c = parse_hf_config(kConfig, "cfg");
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  json j = json::parse(kConfig);
  j["rope_parameters"] = {{"rope_theta", 1e6}, {"rope_type", "default"}};
  EXPECT_FLOAT_EQ(parse_hf_config(j.dump(), "cfg").rope_theta, 1e6f);
  j.erase("rope_parameters");
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  j["head_dim"] = 32;
  c = parse_hf_config(j.dump(), "cfg");
  EXPECT_EQ(c.rope_scaling.kind, RopeScaling::Kind::Llama3);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_FLOAT_EQ(c.rope_theta, 500000.0f);
  j["model_type"] = "qwen2";
  j["tie_word_embeddings"] = true;
  c = parse_hf_config(j.dump(), "cfg");
  EXPECT_TRUE(c.attn_bias);
  EXPECT_FALSE(c.attn_out_bias);
  EXPECT_TRUE(c.tie_embeddings);
}

TEST(HfConfig, BadConfigsFailCleanly) {
  json base = json::parse(kConfig);
  auto with = [&](const char* key, json v) {
    json j = base;
    if (v.is_null()) j.erase(key); else j[key] = v;
    return j.dump();
  };
  expect_error([&] { parse_hf_config("{oops", "conf.json"); }, {"conf.json", "invalid JSON"});
  expect_error([&] { parse_hf_config(with("model_type", "gpt_neox"), "conf.json"); }, {"conf.json", "gpt_neox"});
  expect_error([&] { parse_hf_config(with("hidden_size", nullptr), "conf.json"); }, {"conf.json", "hidden_size"});
  expect_error([&] { parse_hf_config(with("hidden_size", "big"), "conf.json"); }, {"conf.json"});
  expect_error([&] { parse_hf_config(with("num_key_value_heads", 3), "conf.json"); }, {"conf.json", "multiple"});
  expect_error([&] { parse_hf_config(with("vocab_size", 0), "conf.json"); }, {"conf.json", "vocab_size"});
  expect_error([&] { parse_hf_config(with("rope_scaling", json{{"type", "yarn"}, {"factor", 2}}), "conf.json"); },
               {"conf.json", "yarn"});
  expect_error([&] { parse_hf_config(with("hidden_act", "gelu"), "conf.json"); }, {"conf.json", "gelu"});
}

TEST(LlamaModel, WrongShapeOrMissingTensorNamesTheFile) {
  test::TempDir tmp;
  ModelConfig c = parse_hf_config(kConfig, "cfg");
  // Only an embedding of the wrong shape.
  std::string data(32 * 60 * 4, '\0');
  test::write_file(tmp.file("model.safetensors"),
                   safetensors_bytes(R"({"model.embed_tokens.weight":{"dtype":"F32","shape":[32,60],"data_offsets":[0,7680]}})", data));
  auto store = std::make_shared<TensorStore>();
  store->set_origin(tmp.path().string());
  read_safetensors_dir(tmp.path().string(), *store);
  expect_error([&] { LlamaModel m(c, store); }, {tmp.path().string(), "model.embed_tokens.weight", "[32, 60]", "[32, 64]"});
  auto empty = std::make_shared<TensorStore>();
  empty->set_origin("somewhere");
  expect_error([&] { LlamaModel m(c, empty); }, {"somewhere", "missing tensor"});
}
