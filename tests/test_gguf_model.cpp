// GGUF <-> model: q/k row permutation, bit-exact round trips (tiny-llama and
// synthetic llama/qwen2 models), hyper-parameters, rope scaling and vocabulary.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "core/mapped_file.h"
#include "formats/gguf_model.h"
#include "formats/gguf_reader.h"
#include "formats/gguf_writer.h"
#include "formats/safetensors.h"
#include "test_gguf_common.h"

namespace anybit {
namespace {

using gguf_test::expect_file_error;
using gguf_test::TempDir;

const std::string kTiny = std::string(ANYBIT_SOURCE_DIR) + "/models/tiny-llama";

// --- q/k permutation ----------------------------------------------------------------

// llama.cpp's converter: w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(w.shape),
// i.e. GGUF row (h, i, j) holds HF row (h, j, i), written here as explicit index math.
std::vector<uint8_t> converter_permute(const std::vector<uint8_t>& w, int64_t n_head, int64_t hd, size_t row_bytes) {
  std::vector<uint8_t> out(w.size());
  const int64_t half = hd / 2;
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t dst = (h * half + i) * 2 + j;
        const int64_t src = (h * 2 + j) * half + i;
        std::memcpy(&out[size_t(dst) * row_bytes], &w[size_t(src) * row_bytes], row_bytes);
      }
  return out;
}

TEST(GgufPermute, MatchesTheConverterAndIsAnInvolutionPair) {
  std::mt19937 rng(7);
  for (int64_t heads : {1, 3, 5, 7}) {
    for (int64_t hd : {2, 6, 10, 64}) {
      for (size_t row_bytes : {size_t(1), size_t(4), size_t(34), size_t(13)}) {
        const size_t n = size_t(heads * hd) * row_bytes;
        const auto w = gguf_test::random_bytes(n, rng);
        std::vector<uint8_t> g(n, 0xAB), back(n, 0xCD);
        permute_qk_rows(w.data(), g.data(), heads, hd, row_bytes, true);
        EXPECT_EQ(g, converter_permute(w, heads, hd, row_bytes)) << heads << "x" << hd;
        permute_qk_rows(g.data(), back.data(), heads, hd, row_bytes, false);
        EXPECT_EQ(back, w) << heads << "x" << hd;
        if (hd >= 4) EXPECT_NE(g, w);
      }
    }
  }
}

// Why the permutation exists: HF rotates (x_i, x_{i+d/2}), llama.cpp rotates
// (x_{2i}, x_{2i+1}). Applying llama.cpp's RoPE to permuted q and un-permuting must
// equal HF's RoPE on the original q.
TEST(GgufPermute, TurnsRotateHalfRopeIntoInterleavedRope) {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  const int64_t heads = 3, hd = 8, half = hd / 2;
  const float pos = 5.0f, theta = 10000.0f;
  std::vector<float> q(size_t(heads * hd));
  for (auto& x : q) x = nd(rng);
  auto angle = [&](int64_t i) { return pos * std::pow(theta, -2.0f * float(i) / float(hd)); };

  std::vector<float> hf = q;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < half; ++i) {
      const float a = q[size_t(h * hd + i)], b = q[size_t(h * hd + i + half)];
      const float c = std::cos(angle(i)), s = std::sin(angle(i));
      hf[size_t(h * hd + i)] = a * c - b * s;
      hf[size_t(h * hd + i + half)] = a * s + b * c;
    }

  std::vector<float> g(q.size()), back(q.size());
  permute_qk_rows(reinterpret_cast<const uint8_t*>(q.data()), reinterpret_cast<uint8_t*>(g.data()), heads, hd, 4, true);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < half; ++i) {
      float& a = g[size_t(h * hd + 2 * i)];
      float& b = g[size_t(h * hd + 2 * i + 1)];
      const float c = std::cos(angle(i)), s = std::sin(angle(i));
      const float na = a * c - b * s, nb = a * s + b * c;
      a = na, b = nb;
    }
  permute_qk_rows(reinterpret_cast<const uint8_t*>(g.data()), reinterpret_cast<uint8_t*>(back.data()), heads, hd, 4,
                  false);
  for (size_t k = 0; k < q.size(); ++k) EXPECT_FLOAT_EQ(back[k], hf[k]) << k;
}

// --- helpers ------------------------------------------------------------------------

// The GGUF vocabulary of an HF byte-level BPE tokenizer.json, built here so these
// tests do not depend on the tokenizer implementation.
GgufVocab vocab_from_tokenizer_json(const std::string& dir) {
  const auto j = nlohmann::json::parse(read_text_file(dir + "/tokenizer.json"));
  GgufVocab v;
  v.model = "gpt2";
  v.pre = "gpt-2";
  const auto& vocab = j.at("model").at("vocab");
  v.tokens.resize(vocab.size());
  for (const auto& [tok, id] : vocab.items()) v.tokens.at(id.get<size_t>()) = tok;
  v.token_types.assign(v.tokens.size(), 1);
  for (const auto& a : j.at("added_tokens")) {
    const size_t id = a.at("id").get<size_t>();
    if (id >= v.tokens.size()) v.tokens.resize(id + 1), v.token_types.resize(id + 1, 1);
    v.tokens[id] = a.at("content").get<std::string>();
    v.token_types[id] = a.value("special", false) ? 3 : 4;
  }
  for (const auto& m : j.at("model").at("merges"))
    v.merges.push_back(m.is_string() ? m.get<std::string>() : m[0].get<std::string>() + " " + m[1].get<std::string>());
  const auto cfg = nlohmann::json::parse(read_text_file(dir + "/tokenizer_config.json"));
  auto id_of = [&](const char* key) {
    if (!cfg.contains(key) || !cfg[key].is_string()) return -1;
    for (size_t i = 0; i < v.tokens.size(); ++i)
      if (v.tokens[i] == cfg[key].get<std::string>()) return int(i);
    return -1;
  };
  v.bos_id = id_of("bos_token");
  v.eos_id = id_of("eos_token");
  v.pad_id = id_of("pad_token");
  v.add_bos = true;  // the TemplateProcessing post-processor prepends BOS
  v.add_eos = false;
  return v;
}

struct HfModel {
  ModelConfig config;
  TensorStore store;
};

void load_tiny(HfModel& m) {
  m.config = parse_hf_config(read_text_file(kTiny + "/config.json"), kTiny + "/config.json");
  m.store.set_origin(kTiny);
  read_safetensors_dir(kTiny, m.store);
}

// A random model with HF names; tensors live in `store`'s owned buffers.
void make_random_model(const ModelConfig& c, DType matrix_dtype, TensorStore& store, std::mt19937& rng) {
  store.set_origin("random-" + c.arch);
  auto add = [&](const std::string& name, std::vector<int64_t> shape, DType dt) {
    TensorView t;
    t.name = name;
    t.dtype = dt;
    t.shape = shape;
    const int64_t row = shape.back();
    t.nbytes = dtype_row_bytes(dt, row) * size_t(t.numel() / row);
    auto bytes = gguf_test::random_bytes(t.nbytes, rng);
    t.data = store.own(std::move(bytes));
    store.add(std::move(t));
  };
  add("model.embed_tokens.weight", {c.vocab, c.hidden}, matrix_dtype);
  add("model.norm.weight", {c.hidden}, DType::F32);
  if (!c.tie_embeddings) add("lm_head.weight", {c.vocab, c.hidden}, matrix_dtype);
  const int64_t q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {c.hidden}, DType::F32);
    add(p + "post_attention_layernorm.weight", {c.hidden}, DType::F32);
    add(p + "self_attn.q_proj.weight", {q, c.hidden}, matrix_dtype);
    add(p + "self_attn.k_proj.weight", {kv, c.hidden}, matrix_dtype);
    add(p + "self_attn.v_proj.weight", {kv, c.hidden}, matrix_dtype);
    add(p + "self_attn.o_proj.weight", {c.hidden, q}, matrix_dtype);
    add(p + "mlp.gate_proj.weight", {c.ffn, c.hidden}, matrix_dtype);
    add(p + "mlp.up_proj.weight", {c.ffn, c.hidden}, matrix_dtype);
    add(p + "mlp.down_proj.weight", {c.hidden, c.ffn}, matrix_dtype);
    if (c.attn_bias) {
      add(p + "self_attn.q_proj.bias", {q}, DType::F32);
      add(p + "self_attn.k_proj.bias", {kv}, DType::F32);
      add(p + "self_attn.v_proj.bias", {kv}, DType::F32);
    }
  }
}

GgufVocab small_vocab(int64_t n) {
  GgufVocab v;
  v.model = "gpt2";
  v.pre = "qwen2";
  for (int64_t i = 0; i < n; ++i) v.tokens.push_back("t" + std::to_string(i));
  v.token_types.assign(size_t(n), 1);
  v.token_types[0] = 3;
  v.merges = {"t 1", "t 2"};
  v.bos_id = 0;
  v.eos_id = 1;
  v.add_bos = false;
  return v;
}

void expect_same_tensors(const TensorStore& want, const TensorStore& got, bool tied) {
  size_t n = 0;
  for (const auto& [name, t] : want.all()) {
    if (tied && name == "lm_head.weight") continue;
    ++n;
    const TensorView* g = got.find(name);
    ASSERT_NE(g, nullptr) << name;
    EXPECT_EQ(g->dtype, t.dtype) << name;
    EXPECT_EQ(g->shape, t.shape) << name;
    ASSERT_EQ(g->nbytes, t.nbytes) << name;
    EXPECT_EQ(std::memcmp(g->data, t.data, t.nbytes), 0) << name << " differs";
  }
  EXPECT_EQ(got.all().size(), n);
}

void expect_same_config(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.hidden, b.hidden);
  EXPECT_EQ(a.n_layers, b.n_layers);
  EXPECT_EQ(a.n_heads, b.n_heads);
  EXPECT_EQ(a.n_kv_heads, b.n_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.ffn, b.ffn);
  EXPECT_EQ(a.vocab, b.vocab);
  EXPECT_EQ(a.max_position, b.max_position);
  EXPECT_EQ(a.rms_eps, b.rms_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.tie_embeddings, b.tie_embeddings);
  EXPECT_EQ(a.attn_bias, b.attn_bias);
  EXPECT_EQ(a.rope_scaling.kind, b.rope_scaling.kind);
}

void expect_same_vocab(const GgufVocab& a, const GgufVocab& b) {
  EXPECT_EQ(a.model, b.model);
  EXPECT_EQ(a.pre, b.pre);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.token_types, b.token_types);
  EXPECT_EQ(a.scores, b.scores);
  EXPECT_EQ(a.merges, b.merges);
  EXPECT_EQ(a.bos_id, b.bos_id);
  EXPECT_EQ(a.eos_id, b.eos_id);
  EXPECT_EQ(a.unk_id, b.unk_id);
  EXPECT_EQ(a.pad_id, b.pad_id);
  EXPECT_EQ(a.add_bos, b.add_bos);
  EXPECT_EQ(a.add_eos, b.add_eos);
}

// --- round trips ------------------------------------------------------------------

TEST(GgufModel, TinyLlamaRoundTripIsBitExact) {
  HfModel hf;
  load_tiny(hf);
  const GgufVocab vocab = vocab_from_tokenizer_json(kTiny);
  TempDir dir;
  const std::string path = dir.file("tiny.gguf");
  write_gguf_model_vocab(path, hf.config, hf.store, vocab, DType::F16, /*keep_dtype=*/true);

  const GgufModel m = load_gguf_model(path);
  expect_same_config(hf.config, m.config);
  EXPECT_EQ(m.config.arch, "llama");
  EXPECT_EQ(m.config.bos_id, 0);
  EXPECT_EQ(m.config.eos_ids, std::vector<int32_t>{1});
  expect_same_tensors(hf.store, *m.weights, false);
  expect_same_vocab(vocab, m.vocab);

  // The file itself holds q/k in llama.cpp's order and everything else untouched.
  const GgufFile g = GgufFile::open(path);
  EXPECT_EQ(g.get_str("general.architecture"), "llama");
  EXPECT_EQ(g.get_str("general.name"), "tiny-llama");
  EXPECT_EQ(g.get_int("general.file_type"), 32);  // mostly BF16
  EXPECT_EQ(g.get_int("llama.attention.head_count_kv"), 2);
  for (const char* which : {"q", "k"}) {
    const TensorView& orig = hf.store.get(std::string("model.layers.3.self_attn.") + which + "_proj.weight");
    const TensorView stored = g.view(*g.find_tensor(std::string("blk.3.attn_") + which + ".weight"));
    const int64_t heads = which[0] == 'q' ? 6 : 2;
    std::vector<uint8_t> src(static_cast<const uint8_t*>(orig.data),
                             static_cast<const uint8_t*>(orig.data) + orig.nbytes);
    EXPECT_EQ(std::memcmp(stored.data, converter_permute(src, heads, 64, 384 * 2).data(), orig.nbytes), 0);
  }
  const TensorView v = g.view(*g.find_tensor("blk.3.attn_v.weight"));
  EXPECT_EQ(std::memcmp(v.data, hf.store.get("model.layers.3.self_attn.v_proj.weight").data, v.nbytes), 0);
}

TEST(GgufModel, TinyLlamaConvertsToF16AndF32) {
  HfModel hf;
  load_tiny(hf);
  TempDir dir;
  for (DType dt : {DType::F16, DType::F32}) {
    const std::string path = dir.file("tiny.gguf");
    write_gguf_model_vocab(path, hf.config, hf.store, vocab_from_tokenizer_json(kTiny), dt, false);
    const GgufModel m = load_gguf_model(path);
    for (const auto& [name, t] : hf.store.all()) {
      const TensorView& g = m.weights->get(name);
      EXPECT_EQ(g.dtype, t.shape.size() == 2 ? dt : DType::F32) << name;
      ASSERT_EQ(g.shape, t.shape);
      const auto* src = static_cast<const uint16_t*>(t.data);  // bf16
      for (int64_t i = 0; i < t.numel(); ++i) {
        const float x = bf16_to_f32(src[i]);
        if (g.dtype == DType::F16) {
          ASSERT_EQ(static_cast<const uint16_t*>(g.data)[i], f32_to_f16(x)) << name << "[" << i << "]";
        } else {
          ASSERT_EQ(static_cast<const float*>(g.data)[i], x) << name << "[" << i << "]";
        }
      }
    }
  }
}

TEST(GgufModel, WritesThroughTheTokenizer) {
  HfModel hf;
  load_tiny(hf);
  const Tokenizer tok = Tokenizer::from_hf_json_file(kTiny + "/tokenizer.json");
  TempDir dir;
  const std::string path = dir.file("tiny.gguf");
  write_gguf_model(path, hf.config, hf.store, tok, DType::BF16, /*keep_dtype=*/true);
  const GgufModel m = load_gguf_model(path);
  expect_same_vocab(tok.to_gguf_vocab(), m.vocab);
  EXPECT_EQ(m.vocab.tokens.size(), 8192u);
  EXPECT_EQ(m.vocab.pre, "gpt-2");
  expect_same_tensors(hf.store, *m.weights, false);  // bf16 in, bf16 out: identical
}

ModelConfig small_config(const std::string& arch) {
  ModelConfig c;
  c.arch = arch;
  c.hidden = 64;
  c.n_layers = 2;
  c.n_heads = 5;  // odd, with head_dim 32 (hidden != heads * head_dim)
  c.n_kv_heads = 1;
  c.head_dim = 32;
  c.ffn = 96;
  c.vocab = 40;
  c.max_position = 4096;
  c.rms_eps = 1e-6f;
  c.rope_theta = 1e6f;
  if (arch == "qwen2") {
    c.attn_bias = true;
    c.tie_embeddings = true;
  }
  return c;
}

TEST(GgufModel, SyntheticModelsRoundTripInEveryStoredType) {
  TempDir dir;
  std::mt19937 rng(2024);
  for (const char* arch : {"llama", "mistral", "qwen2"}) {
    for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0}) {
      SCOPED_TRACE(std::string(arch) + " " + std::string(dtype_name(dt)));
      const ModelConfig c = small_config(arch);
      TensorStore store;
      make_random_model(c, dt, store, rng);
      const GgufVocab vocab = small_vocab(37);  // fewer tokens than rows: padded
      const std::string path = dir.file("m.gguf");
      write_gguf_model_vocab(path, c, store, vocab, DType::F16, true);
      const GgufModel m = load_gguf_model(path);
      expect_same_config(c, m.config);
      EXPECT_EQ(m.config.arch, std::string(arch) == "qwen2" ? "qwen2" : "llama");
      expect_same_tensors(store, *m.weights, c.tie_embeddings);
      ASSERT_EQ(m.vocab.tokens.size(), 40u);
      EXPECT_EQ(m.vocab.tokens[39], "[PAD39]");
      EXPECT_EQ(m.vocab.token_types[39], 5);
      EXPECT_EQ(m.vocab.merges, vocab.merges);
      EXPECT_FALSE(m.vocab.add_bos);

      // qwen2 rows are stored as is; llama q/k rows are permuted (also the biases).
      const GgufFile g = GgufFile::open(path);
      const TensorView& q = store.get("model.layers.1.self_attn.q_proj.weight");
      const TensorView fq = g.view(*g.find_tensor("blk.1.attn_q.weight"));
      const bool same = std::memcmp(fq.data, q.data, q.nbytes) == 0;
      EXPECT_EQ(same, std::string(arch) == "qwen2");
      EXPECT_EQ(g.find_tensor("output.weight") != nullptr, !c.tie_embeddings);
    }
  }
}

// llama.cpp's K-quant matrices (rows of 256) keep their bytes; q/k rows are whole
// blocks, so the permutation works on them unchanged.
TEST(GgufModel, KQuantMatricesRoundTrip) {
  TempDir dir;
  std::mt19937 rng(77);
  ModelConfig c = small_config("llama");
  c.hidden = 256;
  c.n_heads = 8;
  c.n_kv_heads = 2;
  c.ffn = 512;
  for (DType dt : {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    SCOPED_TRACE(std::string(dtype_name(dt)));
    TensorStore store;
    make_random_model(c, dt, store, rng);
    const std::string path = dir.file("k.gguf");
    write_gguf_model_vocab(path, c, store, small_vocab(40), DType::F16, true);
    const GgufModel m = load_gguf_model(path);
    expect_same_tensors(store, *m.weights, false);
    EXPECT_EQ(m.weights->get("model.layers.0.mlp.up_proj.weight").dtype, dt);
  }
}

TEST(GgufModel, RopeScalingSurvivesTheRoundTrip) {
  TempDir dir;
  std::mt19937 rng(5);
  struct Case {
    RopeScaling::Kind kind;
    float factor, low, high;
    int64_t orig;
    float theta;
    int64_t head_dim;
  };
  const Case cases[] = {
      {RopeScaling::Kind::Linear, 4.0f, 1, 4, 8192, 10000.0f, 32},
      {RopeScaling::Kind::Llama3, 8.0f, 1.0f, 4.0f, 8192, 500000.0f, 128},   // Llama 3.1
      {RopeScaling::Kind::Llama3, 32.0f, 1.0f, 4.0f, 8192, 500000.0f, 64},   // Llama 3.2
      {RopeScaling::Kind::Llama3, 16.0f, 2.0f, 6.0f, 8192, 500000.0f, 128},  // fitted
  };
  for (const Case& k : cases) {
    ModelConfig c = small_config("llama");
    c.head_dim = k.head_dim;
    c.rope_theta = k.theta;
    c.rope_scaling.kind = k.kind;
    c.rope_scaling.factor = k.factor;
    c.rope_scaling.low_freq_factor = k.low;
    c.rope_scaling.high_freq_factor = k.high;
    c.rope_scaling.original_max_position = k.orig;
    TensorStore store;
    make_random_model(c, DType::F16, store, rng);
    const std::string path = dir.file("r.gguf");
    write_gguf_model_vocab(path, c, store, small_vocab(40), DType::F16, true);
    const GgufModel m = load_gguf_model(path);
    const RopeScaling& s = m.config.rope_scaling;
    ASSERT_EQ(s.kind, k.kind);
    EXPECT_FLOAT_EQ(s.factor, k.factor);
    if (k.kind == RopeScaling::Kind::Llama3) {
      EXPECT_NEAR(s.low_freq_factor, k.low, 1e-3 * k.low);
      EXPECT_NEAR(s.high_freq_factor, k.high, 1e-3 * k.high);
      EXPECT_EQ(s.original_max_position, k.orig);
      const GgufFile g = GgufFile::open(path);
      ASSERT_NE(g.find_tensor("rope_freqs.weight"), nullptr);
      EXPECT_EQ(m.weights->find("rope_freqs.weight"), nullptr);  // folded into the config
    }
    expect_same_tensors(store, *m.weights, false);
  }
}

// --- model-level errors -----------------------------------------------------------

TEST(GgufModel, ModelLevelErrorsNameTheFile) {
  TempDir dir;
  std::mt19937 rng(3);
  const ModelConfig c = small_config("llama");
  TensorStore store;
  make_random_model(c, DType::F16, store, rng);

  auto rewrite = [&](const std::string& name, const std::function<void(GgufWriter&)>& edit) {
    // Re-emit a valid file's metadata and tensors with one edit applied.
    const std::string base = dir.file("base.gguf");
    write_gguf_model_vocab(base, c, store, small_vocab(40), DType::F16, true);
    const GgufFile g = GgufFile::open(base);
    GgufWriter w;
    for (const auto& k : g.keys()) w.set(k, *g.find(k));
    for (const auto& t : g.tensors()) {
      const TensorView v = g.view(t);
      w.add_tensor(t.name, t.ggml_type, t.shape, v.data, v.nbytes);
    }
    edit(w);
    const std::string path = dir.file(name);
    w.write(path);
    return path;
  };
  {
    const auto p = rewrite("arch.gguf", [](GgufWriter& w) { w.set("general.architecture", GgufValue::make_str("gpt2")); });
    expect_file_error(p, "unsupported architecture 'gpt2'", [&] { load_gguf_model(p); });
  }
  {
    const auto p = rewrite("nohidden.gguf", [](GgufWriter& w) {
      w.set("llama.embedding_length", GgufValue::make_str("sixty-four"));
    });
    expect_file_error(p, "llama.embedding_length has type string", [&] { load_gguf_model(p); });
  }
  {
    std::vector<uint8_t> q4k(size_t(2 * 144));
    const auto p = rewrite("q4k.gguf", [&](GgufWriter& w) { w.add_tensor("blk.0.ffn_extra.weight", 12, {2, 256}, q4k.data(), q4k.size()); });
    expect_file_error(p, "unexpected tensor blk.0.ffn_extra.weight", [&] { load_gguf_model(p); });
  }
  {
    // An IQ2_XXS matrix under a known name: the type is what's reported.
    const auto base = dir.file("base2.gguf");
    TensorStore s2;
    ModelConfig c2 = c;
    c2.hidden = 256;
    make_random_model(c2, DType::F16, s2, rng);
    write_gguf_model_vocab(base, c2, s2, small_vocab(40), DType::F16, true);
    const GgufFile g = GgufFile::open(base);
    GgufWriter w;
    for (const auto& k : g.keys()) w.set(k, *g.find(k));
    std::vector<uint8_t> blocks;
    for (const auto& t : g.tensors()) {
      const TensorView v = g.view(t);
      if (t.name == "blk.1.ffn_gate.weight") {
        blocks.resize(size_t(t.shape[0]) * 66);
        w.add_tensor(t.name, 16, t.shape, blocks.data(), blocks.size());
      } else {
        w.add_tensor(t.name, t.ggml_type, t.shape, v.data, v.nbytes);
      }
    }
    const std::string p = dir.file("iq2_known.gguf");
    w.write(p);
    expect_file_error(p, "unsupported tensor type IQ2_XXS", [&] { load_gguf_model(p); });
  }
  {
    const auto p = rewrite("badbos.gguf", [](GgufWriter& w) { w.set("tokenizer.ggml.bos_token_id", GgufValue::make_u32(4000)); });
    expect_file_error(p, "bos_token_id 4000 is outside the vocabulary", [&] { load_gguf_model(p); });
  }
  {
    const auto p = rewrite("yarn.gguf", [](GgufWriter& w) { w.set("llama.rope.scaling.type", GgufValue::make_str("yarn")); });
    expect_file_error(p, "unsupported rope scaling type 'yarn'", [&] { load_gguf_model(p); });
  }
}

// Not a test: writes models/tiny-llama as GGUF for scripts/check-llamacpp.sh when
// ANYBIT_GGUF_EXPORT names the output file (ANYBIT_GGUF_DTYPE: f32, f16 or bf16).
TEST(GgufExport, TinyLlamaForLlamaCpp) {
  const char* out = std::getenv("ANYBIT_GGUF_EXPORT");
  if (!out || !*out) GTEST_SKIP() << "set ANYBIT_GGUF_EXPORT=FILE to export tiny-llama";
  const std::string dt = std::getenv("ANYBIT_GGUF_DTYPE") ? std::getenv("ANYBIT_GGUF_DTYPE") : "f16";
  const DType dtype = dt == "f32" ? DType::F32 : dt == "bf16" ? DType::BF16 : DType::F16;
  HfModel hf;
  load_tiny(hf);
  write_gguf_model_vocab(out, hf.config, hf.store, vocab_from_tokenizer_json(kTiny), dtype, false);
  const GgufModel m = load_gguf_model(out);
  EXPECT_EQ(m.config.vocab, 8192);
}

}  // namespace
}  // namespace anybit
