// The quantized checkpoint folder: bit-exact save/load, malformed files, and a quantized
// tiny-llama that still generates what the bf16 model generates.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "core/mapped_file.h"
#include "formats/model_loader.h"
#include "formats/quant_checkpoint.h"
#include "model/llama.h"
#include "quant/group_quant.h"
#include "quant/objective.h"
#include "quant/quantize_model.h"
#include "runtime/random_model.h"
#include "test_util.h"

using namespace anybit;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kTiny = std::string(ANYBIT_SOURCE_DIR) + "/models/tiny-llama";

std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// A random "tiny"-shape model whose linear matrices are quantized with a mix of widths,
// groups, modes and input scales.
ModelFiles mixed_quantized_model(uint64_t seed) {
  ModelFiles m = make_random_model(named_shape("tiny"), DType::BF16, seed);
  auto out = std::make_shared<TensorStore>();
  out->set_origin("mixed");
  out->keep_alive(std::shared_ptr<MappedFile>(m.weights, nullptr));
  std::mt19937 rng(static_cast<uint32_t>(seed));
  int i = 0;
  for (const auto& [name, t] : m.weights->all()) {
    if (t.shape.size() != 2 || name.find("layers.") == std::string::npos) {
      out->add(t);
      continue;
    }
    std::vector<float> w(size_t(t.numel()));
    dequantize_row(t.dtype, t.data, w.data(), t.numel());
    quant::MatrixOptions o;
    o.bits = 2 + i % 7;
    o.group = (i % 3 == 0) ? 32 : (i % 3 == 1) ? 64 : 128;
    o.asym = i % 2;
    o.act_bits = (i % 4 == 3) ? 8 : 0;
    auto q = std::make_shared<QuantizedWeight>(quant::quantize_rtn(w.data(), t.shape[0], t.shape[1], o, nullptr));
    if (i % 5 == 0) {
      q->input_scale.resize(size_t(t.shape[1]));
      std::uniform_real_distribution<float> u(0.5f, 2.0f);
      for (auto& s : q->input_scale) s = u(rng);
      q->quantizer = "awq";
    }
    add_quantized(*out, name, q);
    ++i;
  }
  m.weights = out;
  return m;
}

void expect_same_store(const TensorStore& a, const TensorStore& b) {
  ASSERT_EQ(a.all().size(), b.all().size());
  for (const auto& [name, ta] : a.all()) {
    SCOPED_TRACE(name);
    const TensorView* tb = b.find(name);
    ASSERT_NE(tb, nullptr);
    ASSERT_EQ(ta.dtype, tb->dtype);
    ASSERT_EQ(ta.shape, tb->shape);
    if (ta.dtype != DType::QBITS) {
      ASSERT_EQ(ta.nbytes, tb->nbytes);
      ASSERT_EQ(std::memcmp(ta.data, tb->data, ta.nbytes), 0);
      continue;
    }
    const QuantizedWeight& qa = quantized_of(ta);
    const QuantizedWeight& qb = quantized_of(*tb);
    EXPECT_EQ(qa.bits, qb.bits);
    EXPECT_EQ(qa.group, qb.group);
    EXPECT_EQ(qa.asymmetric, qb.asymmetric);
    EXPECT_EQ(qa.act_bits, qb.act_bits);
    EXPECT_EQ(qa.rows, qb.rows);
    EXPECT_EQ(qa.cols, qb.cols);
    EXPECT_EQ(qa.quantizer, qb.quantizer);
    EXPECT_EQ(qa.codes, qb.codes);
    EXPECT_EQ(qa.scales, qb.scales);  // exact: scales are chosen as f16 values
    EXPECT_EQ(qa.zeros, qb.zeros);
    EXPECT_EQ(qa.input_scale, qb.input_scale);
  }
}

// Rewrites the header of a safetensors file through `edit`, keeping its data bytes.
void edit_header(const std::string& path, const std::function<void(json&)>& edit) {
  std::string bytes = slurp(path);
  uint64_t len = 0;
  std::memcpy(&len, bytes.data(), 8);
  json h = json::parse(bytes.substr(8, len));
  edit(h);
  std::string nh = h.dump();
  while ((8 + nh.size()) % 8) nh.push_back(' ');
  const uint64_t nl = nh.size();
  std::string out(reinterpret_cast<const char*>(&nl), 8);
  out += nh;
  out += bytes.substr(8 + len);
  test::write_file(path, out);
}

// The first quantized weight's name in a header.
std::string first_quantized(const json& h) {
  for (auto& [k, v] : h["__metadata__"].items())
    if (k != "format" && k != "format_version") return k;
  return "";
}

void expect_load_error(const std::string& dir, const std::string& file, const std::string& needle) {
  try {
    load_model_files(dir);
    ADD_FAILURE() << "no error for: " << needle;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(file), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

int32_t argmax(const float* v, int64_t n) {
  int64_t b = 0;
  for (int64_t i = 1; i < n; ++i)
    if (v[i] > v[b]) b = i;
  return int32_t(b);
}

std::vector<int32_t> greedy(const ModelConfig& cfg, std::shared_ptr<const TensorStore> w,
                            const std::vector<int32_t>& prompt, size_t n) {
  LlamaModel model(cfg, std::move(w));
  KVCache kv(cfg, 64, 16);
  SequenceKV seq;
  ForwardOutput out;
  model.forward({BatchEntry{&seq, prompt.data(), int64_t(prompt.size()), false}}, kv, out);
  std::vector<int32_t> ids;
  for (size_t i = 0; i < n; ++i) {
    int32_t id = argmax(out.row(0), out.vocab);
    ids.push_back(id);
    model.forward({BatchEntry{&seq, &id, 1, false}}, kv, out);
  }
  kv.release(seq);
  return ids;
}

}  // namespace

TEST(QuantCheckpoint, SaveLoadRoundTripIsBitExact) {
  test::TempDir dir;
  ModelFiles m = mixed_quantized_model(7);
  ModelFiles tiny = load_model_files(kTiny);
  QuantWriteOptions w;
  w.tokenizer_source = kTiny;
  w.summary = {{"note", "test"}};
  const std::string out = dir.file("q");
  write_quant_folder(out, m.config, *m.weights, tiny.tokenizer, w);
  EXPECT_TRUE(is_quant_checkpoint(out));
  ModelFiles back = load_model_files(out);
  EXPECT_EQ(back.format, kQuantFormatName);
  expect_same_store(*m.weights, *back.weights);
  EXPECT_EQ(back.config.hidden, m.config.hidden);
  EXPECT_EQ(back.config.n_kv_heads, m.config.n_kv_heads);
  EXPECT_EQ(json::parse(slurp(out + "/quantization_config.json"))["note"], "test");

  // Writing what was loaded gives identical files.
  const std::string out2 = dir.file("q2");
  write_quant_folder(out2, back.config, *back.weights, back.tokenizer, w);
  EXPECT_EQ(slurp(out + "/model.safetensors"), slurp(out2 + "/model.safetensors"));

  // Shards: the same tensors spread over several files.
  const std::string out3 = dir.file("q3");
  QuantWriteOptions ws = w;
  ws.shard_bytes = 200000;
  write_quant_folder(out3, m.config, *m.weights, tiny.tokenizer, ws);
  int shards = 0;
  for (const auto& e : fs::directory_iterator(out3)) shards += e.path().extension() == ".safetensors";
  EXPECT_GT(shards, 1);
  expect_same_store(*m.weights, *load_model_files(out3).weights);

  // The model runs on what was loaded, and scalar and table kernels agree with it.
  LlamaModel model(back.config, back.weights);
  KVCache kv(back.config, 8, 16);
  SequenceKV seq;
  ForwardOutput fo;
  const int32_t ids[3] = {1, 2, 3};
  model.forward({BatchEntry{&seq, ids, 3, false}}, kv, fo);
  for (int64_t v = 0; v < fo.vocab; ++v) ASSERT_TRUE(std::isfinite(fo.row(0)[v]));
}

TEST(QuantCheckpoint, GgufVocabularyIsKeptWithoutTokenizerJson) {
  test::TempDir dir;
  ModelFiles tiny = load_model_files(kTiny);
  ModelFiles m = mixed_quantized_model(3);
  m.config.vocab = tiny.config.vocab;
  const std::string out = dir.file("q");
  write_quant_folder(out, m.config, *m.weights, tiny.tokenizer, QuantWriteOptions{});
  ASSERT_TRUE(fs::exists(out + "/gguf_vocab.json"));
  ASSERT_FALSE(fs::exists(out + "/tokenizer.json"));
  // Only the tokenizer matters here; the random model's embedding has another vocab.
  ModelFiles back;
  try {
    back = load_quant_folder(out);
  } catch (const Error& e) {
    FAIL() << e.what();
  }
  const std::string text = "The kernel is not aware of the stub architecture.";
  EXPECT_EQ(back.tokenizer.encode(text, true), tiny.tokenizer.encode(text, true));
}

TEST(QuantCheckpoint, ConfigJsonRoundTrips) {
  ModelConfig c = load_model_files(kTiny).config;
  ModelConfig q = c;
  q.arch = "qwen2";
  q.attn_bias = true;
  q.sliding_window = 4096;
  q.rope_scaling.kind = RopeScaling::Kind::Llama3;
  q.rope_scaling.factor = 8;
  q.eos_ids = {5, 6};
  for (const ModelConfig& a : {c, q}) {
    const ModelConfig b = parse_hf_config(config_to_hf_json(a), "test");
    EXPECT_EQ(b.arch, a.arch);
    EXPECT_EQ(b.hidden, a.hidden);
    EXPECT_EQ(b.n_layers, a.n_layers);
    EXPECT_EQ(b.n_heads, a.n_heads);
    EXPECT_EQ(b.n_kv_heads, a.n_kv_heads);
    EXPECT_EQ(b.head_dim, a.head_dim);
    EXPECT_EQ(b.ffn, a.ffn);
    EXPECT_EQ(b.vocab, a.vocab);
    EXPECT_EQ(b.rms_eps, a.rms_eps);
    EXPECT_EQ(b.rope_theta, a.rope_theta);
    EXPECT_EQ(b.rope_scaling.kind, a.rope_scaling.kind);
    EXPECT_EQ(b.rope_scaling.factor, a.rope_scaling.factor);
    EXPECT_EQ(b.tie_embeddings, a.tie_embeddings);
    EXPECT_EQ(b.attn_bias, a.attn_bias);
    EXPECT_EQ(b.attn_out_bias, a.attn_out_bias);
    EXPECT_EQ(b.sliding_window, a.sliding_window);
    EXPECT_EQ(b.bos_id, a.bos_id);
    EXPECT_EQ(b.eos_ids, a.eos_ids);
  }
}

TEST(QuantCheckpoint, MalformedFilesGiveOneLineErrorsNamingTheFile) {
  test::TempDir dir;
  ModelFiles m = mixed_quantized_model(11);
  QuantWriteOptions w;
  w.tokenizer_source = kTiny;
  const std::string good = dir.file("good");
  write_quant_folder(good, m.config, *m.weights, load_model_files(kTiny).tokenizer, w);
  int n = 0;
  auto mutate = [&](const std::string& needle, const std::function<void(json&, const std::string&)>& edit) {
    SCOPED_TRACE(needle);
    const std::string d = dir.file("bad" + std::to_string(n++));
    fs::copy(good, d);
    const std::string file = d + "/model.safetensors";
    edit_header(file, [&](json& h) { edit(h, first_quantized(h)); });
    expect_load_error(d, file, needle);
  };
  auto set_meta = [](json& h, const std::string& w, const char* key, json v) {
    json m = json::parse(h["__metadata__"][w].get<std::string>());
    m[key] = v;
    h["__metadata__"][w] = m.dump();
  };
  mutate("bits", [&](json& h, const std::string& w) { set_meta(h, w, "bits", 9); });
  mutate("bits", [&](json& h, const std::string& w) { set_meta(h, w, "bits", 1); });
  mutate("group", [&](json& h, const std::string& w) { set_meta(h, w, "group", 48); });
  mutate("does not divide", [&](json& h, const std::string& w) {
    json m = json::parse(h["__metadata__"][w].get<std::string>());
    m["group"] = 128;
    m["shape"] = {m["shape"][0], 96};
    h["__metadata__"][w] = m.dump();
  });
  mutate("unknown quantizer", [&](json& h, const std::string& w) { set_meta(h, w, "quantizer", "magic"); });
  mutate("scale_dtype", [&](json& h, const std::string& w) { set_meta(h, w, "scale_dtype", "f8"); });
  // Metadata claiming one bit more than the code plane holds: the plane is too short.
  mutate(".qcodes has shape", [&](json& h, const std::string& w) {
    json m = json::parse(h["__metadata__"][w].get<std::string>());
    const int b = m["bits"].get<int>();
    m["bits"] = b == 8 ? 7 : b + 1;
    h["__metadata__"][w] = m.dump();
  });
  mutate(".qscales has shape", [&](json& h, const std::string& w) {
    // A consistent tensor (bytes match its own shape) of the wrong size for the weight.
    auto& s = h[w + ".qscales"]["shape"];
    s[1] = s[1].get<int64_t>() - 1;
    const int64_t es = h[w + ".qscales"]["dtype"] == "F32" ? 4 : 2;
    auto& off = h[w + ".qscales"]["data_offsets"];
    off[1] = off[0].get<int64_t>() + s[0].get<int64_t>() * s[1].get<int64_t>() * es;
  });
  mutate("missing", [&](json& h, const std::string& w) { h.erase(w + ".qscales"); });
  mutate("no quantization metadata", [&](json& h, const std::string& w) { h["__metadata__"].erase(w); });
  mutate("format", [&](json& h, const std::string&) { h["__metadata__"].erase("format"); });
  mutate("malformed quantization metadata", [&](json& h, const std::string& w) { h["__metadata__"][w] = "{bits: 3"; });

  // A truncated file: the data section ends early.
  {
    const std::string d = dir.file("trunc");
    fs::copy(good, d);
    const std::string file = d + "/model.safetensors";
    const std::string bytes = slurp(file);
    test::write_file(file, bytes.substr(0, bytes.size() - 1000));
    expect_load_error(d, file, "truncated");
  }
  // A corrupt quantization_config.json.
  {
    const std::string d = dir.file("qc");
    fs::copy(good, d);
    test::write_file(d + "/quantization_config.json", "{\"format\": \"something-else\", \"format_version\": 1}");
    expect_load_error(d, "quantization_config.json", "not an anybit-qbits");
  }
}

// Logits of every position of `ids`, one fresh sequence, on the CPU model of `store`.
std::vector<float> all_logits(const ModelConfig& cfg, const std::shared_ptr<const TensorStore>& store,
                              const std::vector<int32_t>& ids) {
  LlamaModel model(cfg, store);
  KVCache kv(cfg, 4);
  SequenceKV seq;
  ForwardOutput out;
  model.forward({BatchEntry{&seq, ids.data(), int64_t(ids.size()), true}}, kv, out);
  return out.logits;
}

// The QBITS reference semantics with fp32 activations is "dequantize, divide by the input
// scale, fp32 matmul" (QuantMatmul tests pin the scalar kernel to it), so a store of
// those effective fp32 weights runs exactly what the quantized model means.
std::shared_ptr<TensorStore> effective_store(const std::shared_ptr<TensorStore>& q) {
  auto s = std::make_shared<TensorStore>();
  s->keep_alive(std::shared_ptr<MappedFile>(q, nullptr));
  for (const auto& [name, t] : q->all()) {
    if (t.dtype != DType::QBITS) {
      s->add(t);
      continue;
    }
    auto v = std::make_shared<std::vector<float>>(quant::effective_weight(quantized_of(t)));
    TensorView e = t;
    e.dtype = DType::F32;
    e.data = v->data();
    e.nbytes = v->size() * 4;
    s->add(e);
    s->keep_alive(std::shared_ptr<MappedFile>(v, nullptr));
  }
  return s;
}

TEST(QuantModel, TinyLlamaAt8BitsGreedyEqualsBf16) {
  ModelFiles tiny = load_model_files(kTiny);
  const json ref = json::parse(read_text_file(kTiny + "/reference.json"));
  const auto& r0 = ref.at("references").at(0);
  const auto prompt = r0.at("prompt_ids").get<std::vector<int32_t>>();
  const auto want = r0.at("greedy_ids").get<std::vector<int32_t>>();
  ASSERT_EQ(greedy(tiny.config, tiny.weights, prompt, want.size()), want);  // the bf16 continuation

  quant::QuantizeOptions o;
  o.bits = 8;
  o.group = 128;
  o.progress = false;
  quant::QuantizeResult q = quant::quantize_model(tiny, o);
  ASSERT_EQ(q.matrices.size(), size_t(7 * tiny.config.n_layers));
  for (const auto& m : q.matrices) EXPECT_LT(m.rel_error, 1e-4) << m.name;
  EXPECT_NEAR(q.linear_bpw, 8.125, 1e-9);
  test::TempDir dir;
  QuantWriteOptions w;
  w.tokenizer_source = kTiny;
  w.summary = q.summary;
  write_quant_folder(dir.file("q8"), tiny.config, *q.weights, tiny.tokenizer, w);
  ModelFiles back = load_model_files(dir.file("q8"));
  EXPECT_EQ(back.weights->get("lm_head.weight").dtype, DType::QBITS);
  // The embedding table at 8 bits by default (--embed-bits).
  ASSERT_EQ(back.weights->get("model.embed_tokens.weight").dtype, DType::QBITS);
  EXPECT_EQ(quantized_of(back.weights->get("model.embed_tokens.weight")).bits, 8);
  EXPECT_EQ(q.summary.at("embed_bits").get<int>(), 8);

  EXPECT_EQ(greedy(back.config, effective_store(back.weights), prompt, want.size()), want);
  // Through whatever QBITS kernel this CPU's table runs: the fast kernels may quantize
  // activations internally, so only a prefix is required to match here.
  const auto fast = greedy(back.config, back.weights, prompt, want.size());
  EXPECT_EQ(std::vector<int32_t>(fast.begin(), fast.begin() + 16), std::vector<int32_t>(want.begin(), want.begin() + 16));
  if (fast != want) std::fprintf(stderr, "note: the table's QBITS kernel departs from the bf16 greedy continuation\n");
}

namespace {

// Calibration text for the tests below: a document of this repository (never evaluation text).
std::string calib_text() { return read_text_file(std::string(ANYBIT_SOURCE_DIR) + "/docs/ARCHITECTURE.md"); }

// A small random Llama (2 layers, hidden 128) with tiny-llama's tokenizer: GPTQ on it takes
// well under a second, where tiny-llama's 1024-wide down_proj takes seconds per matrix.
ModelFiles small_model() {
  ModelConfig c = named_shape("tiny");
  c.hidden = 128, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 32, c.ffn = 384;
  ModelFiles m = make_random_model(c, DType::BF16, 4242);
  m.tokenizer = load_model_files(kTiny).tokenizer;
  return m;
}

quant::QuantizeOptions calibrated_options() {
  quant::QuantizeOptions o;
  o.calib_text = calib_text();
  o.calib_origin = "ARCHITECTURE.md";
  o.calib_tokens = 2048;
  o.calib_ctx = 256;
  o.progress = false;
  return o;
}

// E||r - x||^2 of the final hidden state (lm_head's input) of `q` against the unquantized
// model on the calibration windows: how far the quantized function is from the reference.
double final_state_mismatch(const ModelFiles& m, const std::shared_ptr<TensorStore>& q, const quant::QuantizeOptions& o) {
  const auto windows = quant::calibration_windows(m.tokenizer, o.calib_text, o.calib_ctx, o.calib_tokens, "calib");
  quant::CollectOptions co;
  co.sites = {"lm_head.weight"};
  std::map<std::string, quant::InputStats> ref, paired;
  quant::collect_input_stats(m.config, m.weights, windows, co, ref);
  quant::collect_paired_stats(m.config, m.weights, effective_store(q), windows, co, paired);
  const quant::InputStats& r = ref.at("lm_head.weight");
  const quant::InputStats& p = paired.at("lm_head.weight");
  double e = 0.0;
  for (int64_t c = 0; c < r.k; ++c) {
    const size_t d = size_t(c * r.k + c);
    e += r.xtx[d] - 2.0 * p.rtx[d] + p.xtx[d];
  }
  return e / double(r.n);
}

}  // namespace

TEST(QuantModel, ReferenceTargetBringsTheQuantizedFunctionCloserToTheReference) {
  const ModelFiles m = small_model();
  quant::QuantizeOptions o = calibrated_options();
  o.bits = 3;
  o.group = 64;
  o.asym = true;
  o.lm_head_bits = 0;  // only the layers' matrices differ between the two runs
  const quant::QuantizeResult plain = quant::quantize_model(m, o);
  o.reference_target = true;
  o.site_sequential = true;
  const quant::QuantizeResult target = quant::quantize_model(m, o);
  EXPECT_TRUE(target.summary.at("calibration").at("reference_target").get<bool>());
  EXPECT_TRUE(target.summary.at("calibration").at("site_sequential").get<bool>());
  const double e_plain = final_state_mismatch(m, plain.weights, o), e_target = final_state_mismatch(m, target.weights, o);
  EXPECT_GT(e_plain, 0.0);
  EXPECT_LT(e_target, 0.9 * e_plain) << "plain " << e_plain << " reference target " << e_target;
  quant::QuantizeOptions bad = o;
  bad.sequential = false;
  EXPECT_THROW(quant::quantize_model(m, bad), Error);
}

TEST(QuantModel, MixedFormatsChooseGroupsAndZerosWithinTheBudgetAndRoundTrip) {
  const ModelFiles m = small_model();
  quant::QuantizeOptions o = calibrated_options();
  o.target_bpw = 3.6;
  o.mixed_formats = true;
  o.min_bits = 2;
  o.max_bits = 4;
  o.sensitivity_tokens = 512;
  o.gptq.refine = 1;
  const quant::QuantizeResult q = quant::quantize_model(m, o);
  EXPECT_LE(q.linear_bpw, 3.6 + 1e-12);
  EXPECT_GT(q.linear_bpw, 3.4);  // the budget is used, not wasted
  test::TempDir dir;
  QuantWriteOptions w;
  w.tokenizer_source = kTiny;
  w.summary = q.summary;
  write_quant_folder(dir.file("mixed"), m.config, *q.weights, m.tokenizer, w);
  ModelFiles back = load_model_files(dir.file("mixed"));
  const json per = q.summary.at("matrices");
  for (const auto& r : q.matrices) {
    const QuantizedWeight& a = quantized_of(q.weights->get(r.name));
    const QuantizedWeight& b = quantized_of(back.weights->get(r.name));
    EXPECT_EQ(per.at(r.name).at("group").get<int>(), a.group) << r.name;
    EXPECT_EQ(per.at(r.name).at("sym").get<bool>(), !a.asymmetric) << r.name;
    EXPECT_EQ(b.group, a.group) << r.name;
    EXPECT_EQ(b.asymmetric, a.asymmetric) << r.name;
    EXPECT_EQ(b.bits, a.bits) << r.name;
    EXPECT_EQ(b.codes, a.codes) << r.name;
  }
}

// `--embed-bits`: the embedding table stored as QBITS, looked up through its own row
// dequantization. With every other tensor shared, the model must give exactly the logits of
// a model whose table holds those dequantized rows in fp32.
TEST(QuantModel, QuantizedEmbeddingTableLooksUpItsDequantizedRows) {
  ModelFiles m = small_model();
  quant::QuantizeOptions o;
  o.bits = 4, o.group = 64, o.embed_bits = 4, o.progress = false;
  const quant::QuantizeResult q = quant::quantize_model(m, o);
  EXPECT_EQ(q.summary.at("embed_bits").get<int>(), 4);
  test::TempDir dir;
  QuantWriteOptions w;
  w.summary = q.summary;
  write_quant_folder(dir.file("qe"), m.config, *q.weights, m.tokenizer, w);
  ModelFiles back = load_model_files(dir.file("qe"));
  const TensorView& e = back.weights->get("model.embed_tokens.weight");
  ASSERT_EQ(e.dtype, DType::QBITS);
  const QuantizedWeight& qe = quantized_of(e);
  EXPECT_EQ(qe.bits, 4);
  EXPECT_EQ(qe.group, 64);
  const int64_t V = m.config.vocab, H = m.config.hidden;
  ASSERT_EQ(qe.rows, V);
  ASSERT_EQ(qe.cols, H);

  auto table = std::make_shared<std::vector<float>>(size_t(V * H), std::numeric_limits<float>::quiet_NaN());
  for (int64_t r = 0; r < V; ++r) qe.dequantize_row(r, table->data() + r * H);
  // The rows are the source table's within 4-bit rounding (relative RMS error well under 10%).
  const TensorView& st = m.weights->get("model.embed_tokens.weight");
  std::vector<float> src(size_t(V * H));
  for (int64_t r = 0; r < V; ++r)
    dequantize_row(st.dtype, static_cast<const uint8_t*>(st.data) + size_t(r) * dtype_row_bytes(st.dtype, H),
                   src.data() + r * H, H);
  double err = 0.0, energy = 0.0;
  for (size_t i = 0; i < src.size(); ++i) err += std::pow(double((*table)[i]) - src[i], 2), energy += double(src[i]) * src[i];
  EXPECT_LT(std::sqrt(err / energy), 0.1);

  auto dense = std::make_shared<TensorStore>();
  dense->keep_alive(std::shared_ptr<MappedFile>(back.weights, nullptr));
  dense->keep_alive(std::shared_ptr<MappedFile>(table, nullptr));
  for (const auto& [name, t] : back.weights->all()) {
    if (name != "model.embed_tokens.weight") {
      dense->add(t);
      continue;
    }
    TensorView f = t;
    f.dtype = DType::F32, f.data = table->data(), f.nbytes = table->size() * 4;
    dense->add(f);
  }
  std::mt19937 rng(11);
  std::vector<int32_t> ids(9);
  for (auto& id : ids) id = int32_t(rng() % uint32_t(V));
  const std::vector<float> logits[2] = {all_logits(back.config, back.weights, ids), all_logits(back.config, dense, ids)};
  ASSERT_EQ(logits[0].size(), ids.size() * size_t(V));
  for (float v : logits[0]) ASSERT_TRUE(std::isfinite(v));
  EXPECT_EQ(logits[0], logits[1]);

  quant::QuantizeOptions bad = o;
  bad.embed_bits = 9;
  EXPECT_THROW(quant::quantize_model(m, bad), Error);
}

// Hidden sizes such as SmolLM's 576 or 960 are not whole groups of 128. Such a matrix falls back
// to the largest of 64 and 32 that divides its rows, in every path (uniform widths, mixed
// precision, lm_head, the embedding table), and the model still runs; a row that is not a
// multiple of 32 is refused with the tensor's name.
TEST(QuantModel, RowsThatAreNotWholeGroupsFallBackToSmallerGroups) {
  ModelConfig c = named_shape("tiny");
  c.hidden = 192, c.n_layers = 2, c.n_heads = 6, c.n_kv_heads = 2, c.head_dim = 32, c.ffn = 352;
  ModelFiles m = make_random_model(c, DType::BF16, 977);
  m.tokenizer = load_model_files(kTiny).tokenizer;
  // Tied embeddings, as in most small models: lm_head comes from the embedding table.
  auto tied = std::make_shared<TensorStore>();
  tied->keep_alive(std::shared_ptr<MappedFile>(m.weights, nullptr));
  for (const auto& [name, t] : m.weights->all())
    if (name != "lm_head.weight") tied->add(t);
  m.weights = tied;
  m.config.tie_embeddings = true;
  // 192 = 1.5 x 128 -> groups of 64; down_proj's 352 = 11 x 32 -> groups of 32.
  auto group_of = [](const std::string& name) { return name.find("down_proj") != std::string::npos ? 32 : 64; };

  quant::QuantizeOptions o;
  o.bits = 4, o.group = 128, o.progress = false;
  const quant::QuantizeResult q = quant::quantize_model(m, o);
  ASSERT_EQ(q.matrices.size(), size_t(7 * c.n_layers));
  double bits = 0.0, numel = 0.0;
  for (const auto& r : q.matrices) {
    const QuantizedWeight& w = quantized_of(q.weights->get(r.name));
    EXPECT_EQ(w.group, group_of(r.name)) << r.name;
    EXPECT_EQ(q.summary.at("matrices").at(r.name).at("group").get<int>(), w.group) << r.name;
    bits += double(r.numel) * (4.0 + 16.0 / w.group), numel += double(r.numel);
  }
  EXPECT_NEAR(q.linear_bpw, bits / numel, 1e-12);
  for (const char* name : {"lm_head.weight", "model.embed_tokens.weight"}) {
    const QuantizedWeight& w = quantized_of(q.weights->get(name));
    EXPECT_EQ(w.group, 64) << name;
    EXPECT_EQ(w.bits, 8) << name;
  }

  // Saved and loaded, the model computes what its dequantized weights say (the fast kernels
  // may round activations to 8 bits, hence the tolerance).
  test::TempDir dir;
  QuantWriteOptions w;
  w.summary = q.summary;
  write_quant_folder(dir.file("q"), m.config, *q.weights, m.tokenizer, w);
  ModelFiles back = load_model_files(dir.file("q"));
  std::mt19937 rng(5);
  std::vector<int32_t> ids(7);
  for (auto& id : ids) id = int32_t(rng() % uint32_t(c.vocab));
  const std::vector<float> logits[2] = {all_logits(back.config, back.weights, ids),
                                        all_logits(back.config, effective_store(back.weights), ids)};
  ASSERT_EQ(logits[0].size(), ids.size() * size_t(c.vocab));
  double d = 0.0, e = 0.0;
  for (size_t i = 0; i < logits[0].size(); ++i) {
    ASSERT_TRUE(std::isfinite(logits[0][i]));
    d += std::pow(double(logits[0][i]) - logits[1][i], 2), e += double(logits[1][i]) * logits[1][i];
  }
  EXPECT_LT(std::sqrt(d / e), 0.02);

  // Mixed precision: every matrix takes only groups that divide its rows; without
  // --mixed-formats, only its fallback group.
  for (bool formats : {true, false}) {
    quant::QuantizeOptions mo = calibrated_options();
    mo.target_bpw = 3.5, mo.mixed_formats = formats, mo.min_bits = 2, mo.max_bits = 4;
    mo.sensitivity_tokens = 512, mo.gptq.refine = 1;
    const quant::QuantizeResult mq = quant::quantize_model(m, mo);
    EXPECT_LE(mq.linear_bpw, 3.5 + 1e-12) << formats;
    EXPECT_GT(mq.linear_bpw, 3.2) << formats;
    for (const auto& r : mq.matrices) {
      const QuantizedWeight& qw = quantized_of(mq.weights->get(r.name));
      EXPECT_EQ(qw.cols % qw.group, 0) << r.name;
      if (!formats) EXPECT_EQ(qw.group, group_of(r.name)) << r.name;
    }
  }

  // Rows of 200 are not a multiple of 32: a clear error naming the tensor.
  ModelConfig odd = c;
  odd.hidden = 200, odd.n_heads = 5, odd.n_kv_heads = 1, odd.head_dim = 40;
  ModelFiles bad = make_random_model(odd, DType::BF16, 978);
  try {
    quant::quantize_model(bad, o);
    ADD_FAILURE() << "rows of 200 were quantized";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("not a multiple of 32"), std::string::npos) << err.what();
    EXPECT_NE(std::string(err.what()).find("q_proj"), std::string::npos) << err.what();
  }
}

// Sequential calibration keeps each window's residual stream between stages (StreamCache)
// instead of running the model from the start: every site's statistics, plain and paired
// with the reference, must be those of the full forwards, layer after layer.
TEST(QuantCalibration, StreamCacheGivesTheStatisticsOfFullForwards) {
  const ModelFiles m = small_model();
  quant::QuantizeOptions o;
  o.bits = 3, o.group = 64, o.embed_bits = 0, o.progress = false;  // the same embedding in both models
  const std::shared_ptr<const TensorStore> qw = effective_store(quant::quantize_model(m, o).weights);
  const auto windows = quant::calibration_windows(m.tokenizer, calib_text(), 96, 96 * 9, "calib");
  ASSERT_EQ(windows.size(), 9u);  // two batches of 4 and one of 1
  quant::StreamCache paired(m.config, qw, windows, true), plain(m.config, qw, windows, false);
  auto expect_same = [](const quant::InputStats& a, const quant::InputStats& b, const std::string& what) {
    ASSERT_EQ(a.n, b.n) << what;
    ASSERT_EQ(a.xtx.size(), b.xtx.size()) << what;
    ASSERT_EQ(a.rtx.size(), b.rtx.size()) << what;
    for (size_t i = 0; i < a.xtx.size(); ++i) ASSERT_NEAR(a.xtx[i], b.xtx[i], 1e-6 * (std::abs(b.xtx[i]) + 1e-3)) << what;
    for (size_t i = 0; i < a.rtx.size(); ++i) ASSERT_NEAR(a.rtx[i], b.rtx[i], 1e-6 * (std::abs(b.rtx[i]) + 1e-3)) << what;
    for (size_t i = 0; i < a.abs_sum.size(); ++i) ASSERT_NEAR(a.abs_sum[i], b.abs_sum[i], 1e-6 * (b.abs_sum[i] + 1e-3)) << what;
  };
  for (int64_t l = 0; l < m.config.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (const char* site : {"self_attn.q_proj.weight", "self_attn.o_proj.weight", "mlp.gate_proj.weight",
                             "mlp.down_proj.weight"}) {
      quant::CollectOptions co;
      co.sites = {p + site};
      co.stop_after = p + site;
      std::map<std::string, quant::InputStats> a, b, c, d;
      paired.collect(qw, m.weights, co, a);
      quant::collect_paired_stats(m.config, m.weights, qw, windows, co, b);
      expect_same(a.at(p + site), b.at(p + site), "paired " + p + site);
      ASSERT_FALSE(a.at(p + site).rtx.empty());
      plain.collect(qw, nullptr, co, c);
      quant::collect_input_stats(m.config, qw, windows, co, d);
      expect_same(c.at(p + site), d.at(p + site), "plain " + p + site);
    }
    std::map<std::string, quant::InputStats> unused;
    EXPECT_THROW(plain.collect(qw, m.weights, quant::CollectOptions{}, unused), Error);  // it keeps no reference
    paired.advance(qw, m.weights);
    plain.advance(qw, nullptr);
    EXPECT_EQ(paired.layer(), l + 1);
  }
  EXPECT_THROW(plain.advance(qw, nullptr), Error);
}
