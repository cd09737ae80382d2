// GGUF <-> anybit model: hyper-parameters, tensor names, the llama q/k row order,
// Llama-3 rope factors and the tokenizer.ggml.* vocabulary.
#include "formats/gguf_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <spdlog/spdlog.h>

#include "core/error.h"
#include "formats/gguf_reader.h"
#include "formats/gguf_writer.h"

namespace anybit {

namespace {

struct NamePair {
  const char* gguf;
  const char* hf;
};
constexpr NamePair kGlobalNames[] = {
    {"token_embd", "model.embed_tokens"}, {"output_norm", "model.norm"}, {"output", "lm_head"}};
constexpr NamePair kLayerNames[] = {
    {"attn_q", "self_attn.q_proj"},   {"attn_k", "self_attn.k_proj"},   {"attn_v", "self_attn.v_proj"},
    {"attn_output", "self_attn.o_proj"}, {"ffn_gate", "mlp.gate_proj"}, {"ffn_up", "mlp.up_proj"},
    {"ffn_down", "mlp.down_proj"},    {"attn_norm", "input_layernorm"}, {"ffn_norm", "post_attention_layernorm"}};

// Splits "stem.weight" / "stem.bias"; false for anything else.
bool split_suffix(const std::string& name, std::string& stem, std::string& suffix) {
  for (const char* s : {".weight", ".bias"}) {
    const size_t n = std::strlen(s);
    if (name.size() > n && name.compare(name.size() - n, n, s) == 0) {
      stem = name.substr(0, name.size() - n);
      suffix = s;
      return true;
    }
  }
  return false;
}

// Parses a decimal layer index at the start of `s` ("12.attn_q" -> 12, rest "attn_q").
bool parse_layer(const std::string& s, int64_t& layer, std::string& rest) {
  size_t k = 0;
  layer = 0;
  while (k < s.size() && k < 9 && s[k] >= '0' && s[k] <= '9') layer = layer * 10 + (s[k++] - '0');
  if (k == 0 || k >= s.size() || s[k] != '.') return false;
  rest = s.substr(k + 1);
  return true;
}

// "" when the name is not part of a llama/qwen2 checkpoint.
std::string gguf_to_hf(const std::string& name, int64_t* layer_out) {
  std::string stem, suffix, rest;
  if (!split_suffix(name, stem, suffix)) return "";
  for (const auto& p : kGlobalNames)
    if (stem == p.gguf) return p.hf + suffix;
  int64_t layer;
  if (stem.rfind("blk.", 0) != 0 || !parse_layer(stem.substr(4), layer, rest)) return "";
  for (const auto& p : kLayerNames)
    if (rest == p.gguf) {
      if (layer_out) *layer_out = layer;
      return "model.layers." + std::to_string(layer) + "." + p.hf + suffix;
    }
  return "";
}

std::string hf_to_gguf(const std::string& name, int64_t* layer_out) {
  std::string stem, suffix, rest;
  if (!split_suffix(name, stem, suffix)) return "";
  for (const auto& p : kGlobalNames)
    if (stem == p.hf) return p.gguf + suffix;
  int64_t layer;
  if (stem.rfind("model.layers.", 0) != 0 || !parse_layer(stem.substr(13), layer, rest)) return "";
  for (const auto& p : kLayerNames)
    if (rest == p.hf) {
      if (layer_out) *layer_out = layer;
      return "blk." + std::to_string(layer) + "." + p.gguf + suffix;
    }
  return "";
}

// The per-frequency divisors of the rotary base that Llama-3 rope scaling implies,
// computed in float as llama.cpp's converter does (it stores them as rope_freqs.weight).
std::vector<float> llama3_factors(int64_t head_dim, float theta, const RopeScaling& s) {
  std::vector<float> out;
  const float ctx = float(s.original_max_position);
  const float low_wavelen = ctx / s.low_freq_factor;
  const float high_wavelen = ctx / s.high_freq_factor;
  for (int64_t i = 0; i < head_dim; i += 2) {
    const float freq = 1.0f / std::pow(theta, float(i) / float(head_dim));
    const float wavelen = 2.0f * float(M_PI) / freq;
    if (wavelen < high_wavelen) {
      out.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      out.push_back(s.factor);
    } else {
      const float smooth = (ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      out.push_back(1.0f / ((1.0f - smooth) / s.factor + smooth));
    }
  }
  return out;
}

bool factors_match(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!(std::fabs(a[i] - b[i]) <= 1e-3f * std::max(1.0f, std::fabs(b[i])))) return false;
  return true;
}

// Recovers RopeScaling from a rope_freqs.weight tensor. Only the ratios of
// (original_max_position, low_freq_factor, high_freq_factor) matter to the factors,
// so the original context is taken from the file (or Llama-3's 8192) and the two
// frequency factors are fitted to the smoothly interpolated entries; the result is
// accepted only if it reproduces every stored factor.
RopeScaling fit_llama3(const std::vector<float>& r, int64_t head_dim, float theta, int64_t orig_ctx,
                       const std::string& path) {
  RopeScaling s;
  if (std::all_of(r.begin(), r.end(), [](float x) { return std::fabs(x - 1.0f) < 1e-6f; })) return s;
  s.kind = RopeScaling::Kind::Llama3;
  s.factor = r.back();
  s.original_max_position = orig_ctx;
  s.low_freq_factor = 1.0f;
  s.high_freq_factor = 4.0f;
  if (s.factor > 1.0f && factors_match(llama3_factors(head_dim, theta, s), r)) return s;

  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  int n = 0;
  for (size_t i = 0; i < r.size(); ++i) {
    if (!(r[i] > 1.0001f && r[i] < s.factor * 0.9999f)) continue;
    const double freq = 1.0 / std::pow(double(theta), double(2 * i) / double(head_dim));
    const double x = freq / (2.0 * M_PI);  // 1 / wavelength
    const double y = (1.0 / r[i] - 1.0 / s.factor) / (1.0 - 1.0 / s.factor);
    sx += x, sy += y, sxx += x * x, sxy += x * y, ++n;
  }
  const double det = n * sxx - sx * sx;
  if (n >= 2 && det != 0) {
    const double a = (n * sxy - sx * sy) / det;  // = L / (hf - lf)
    const double b = (sy - a * sx) / n;          // = -lf / (hf - lf)
    if (a > 0) {
      s.low_freq_factor = float(-b * double(orig_ctx) / a);
      s.high_freq_factor = float(s.low_freq_factor + double(orig_ctx) / a);
      if (s.low_freq_factor > 0 && factors_match(llama3_factors(head_dim, theta, s), r)) return s;
    }
  }
  fail("{}: rope_freqs.weight does not match a Llama-3 rope scaling (factor {}); unsupported", path, s.factor);
}

void check_id(int32_t id, size_t n_tokens, const char* what, const std::string& path) {
  if (id >= 0 && n_tokens > 0 && size_t(id) >= n_tokens)
    fail("{}: {} {} is outside the vocabulary of {} tokens", path, what, id, n_tokens);
}

GgufVocab read_vocab(const GgufFile& g) {
  const std::string& path = g.path();
  GgufVocab v;
  v.model = g.get_str("tokenizer.ggml.model", "");
  v.pre = g.get_str("tokenizer.ggml.pre", "");
  v.tokens = g.get_str_array("tokenizer.ggml.tokens");
  v.scores = g.get_f32_array("tokenizer.ggml.scores");
  v.token_types = g.get_i32_array("tokenizer.ggml.token_type");
  v.merges = g.get_str_array("tokenizer.ggml.merges");
  if (!v.scores.empty() && v.scores.size() != v.tokens.size())
    fail("{}: tokenizer.ggml.scores has {} entries for {} tokens", path, v.scores.size(), v.tokens.size());
  if (!v.token_types.empty() && v.token_types.size() != v.tokens.size())
    fail("{}: tokenizer.ggml.token_type has {} entries for {} tokens", path, v.token_types.size(), v.tokens.size());
  auto id = [&](const char* key) {
    const int64_t x = g.get_int(std::string("tokenizer.ggml.") + key, -1);
    if (x < -1 || x > INT32_MAX) fail("{}: tokenizer.ggml.{} = {} is out of range", path, key, x);
    check_id(int32_t(x), v.tokens.size(), key, path);
    return int32_t(x);
  };
  v.bos_id = id("bos_token_id");
  v.eos_id = id("eos_token_id");
  v.unk_id = id("unknown_token_id");
  v.pad_id = id("padding_token_id");
  // llama.cpp's defaults when the flags are absent: SentencePiece adds BOS, BPE only
  // for the Llama-3 pre-tokenizers.
  const bool llama3_pre = v.pre == "llama3" || v.pre == "llama-v3" || v.pre == "llama-bpe" || v.pre == "falcon3";
  v.add_bos = g.get_bool("tokenizer.ggml.add_bos_token", v.model == "llama" || llama3_pre);
  v.add_eos = g.get_bool("tokenizer.ggml.add_eos_token", false);
  return v;
}

}  // namespace

GgufModel load_gguf_model(const std::string& path) {
  GgufFile g = GgufFile::open(path);
  const std::string arch = g.get_str("general.architecture");
  if (arch != "llama" && arch != "mistral" && arch != "qwen2")
    fail("{}: unsupported architecture '{}' (supported: llama, mistral, qwen2)", path, arch);
  const std::string p = arch + ".";

  GgufModel m;
  ModelConfig& c = m.config;
  c.arch = arch;
  c.hidden = g.get_int(p + "embedding_length");
  c.n_layers = g.get_int(p + "block_count");
  c.ffn = g.get_int(p + "feed_forward_length");
  c.n_heads = g.get_int(p + "attention.head_count");
  c.n_kv_heads = g.get_int(p + "attention.head_count_kv", c.n_heads);
  c.max_position = g.get_int(p + "context_length");
  c.rms_eps = float(g.get_float(p + "attention.layer_norm_rms_epsilon"));
  c.rope_theta = float(g.get_float(p + "rope.freq_base", 10000.0));
  c.head_dim = g.get_int(p + "attention.key_length", c.n_heads > 0 ? c.hidden / c.n_heads : 0);
  if (g.get_int(p + "attention.value_length", c.head_dim) != c.head_dim)
    fail("{}: attention.value_length differs from key_length {} (unsupported)", path, c.head_dim);
  if (g.get_int(p + "rope.dimension_count", c.head_dim) != c.head_dim)
    fail("{}: rope.dimension_count {} differs from the head size {} (partial rotary is unsupported)", path,
         g.get_int(p + "rope.dimension_count"), c.head_dim);

  const std::string scaling = g.get_str(p + "rope.scaling.type", "none");
  if (scaling == "linear") {
    c.rope_scaling.kind = RopeScaling::Kind::Linear;
    c.rope_scaling.factor = float(g.get_float(p + "rope.scaling.factor"));
  } else if (scaling != "none") {
    fail("{}: unsupported rope scaling type '{}' (supported: none, linear, llama3)", path, scaling);
  } else if (g.has(p + "rope.scale_linear") && g.get_float(p + "rope.scale_linear") != 1.0) {
    c.rope_scaling.kind = RopeScaling::Kind::Linear;  // the key older converters wrote
    c.rope_scaling.factor = float(g.get_float(p + "rope.scale_linear"));
  }
  // validate() before the tensors: the q/k permutation below divides by these.
  c.vocab = 1;
  c.validate(path);

  auto store = std::make_shared<TensorStore>();
  store->set_origin(path);
  store->keep_alive(g.file());
  const bool permuted = arch != "qwen2";
  for (const auto& ti : g.tensors()) {
    if (ti.name == "rope_freqs.weight" && permuted) {
      const TensorView v = g.view(ti);
      if (v.dtype != DType::F32 || v.shape != std::vector<int64_t>{c.head_dim / 2})
        fail("{}: rope_freqs.weight must be f32 [{}], got {} {}", path, c.head_dim / 2, dtype_name(v.dtype),
             v.shape_str());
      std::vector<float> r(size_t(c.head_dim / 2));
      std::memcpy(r.data(), v.data, r.size() * 4);
      if (c.rope_scaling.kind != RopeScaling::Kind::None)
        fail("{}: both rope_freqs.weight and rope.scaling.type are set", path);
      c.rope_scaling = fit_llama3(r, c.head_dim, c.rope_theta,
                                  g.get_int(p + "rope.scaling.original_context_length", 8192), path);
      continue;
    }
    int64_t layer = -1;
    const std::string hf = gguf_to_hf(ti.name, &layer);
    if (hf.empty()) fail("{}: unexpected tensor {} for architecture {}", path, ti.name, arch);
    if (layer >= c.n_layers) fail("{}: tensor {} but block_count is {}", path, ti.name, c.n_layers);
    TensorView v = g.view(ti);
    v.name = hf;
    const bool is_q = ti.name.find(".attn_q.") != std::string::npos;
    const bool is_k = ti.name.find(".attn_k.") != std::string::npos;
    if (permuted && (is_q || is_k)) {
      const int64_t heads = is_q ? c.n_heads : c.n_kv_heads;
      if (v.shape.empty() || v.shape[0] != heads * c.head_dim)
        fail("{}: tensor {} has shape {}, expected {} rows ({} heads x {})", path, ti.name, v.shape_str(),
             heads * c.head_dim, heads, c.head_dim);
      if (v.shape.size() == 1 && dtype_block_size(v.dtype) != 1)
        fail("{}: tensor {} is a block-quantized vector; cannot reorder its rows", path, ti.name);
      std::vector<uint8_t> buf(v.nbytes);
      permute_qk_rows(static_cast<const uint8_t*>(v.data), buf.data(), heads, c.head_dim,
                      v.nbytes / size_t(v.shape[0]), /*to_gguf=*/false);
      v.data = store->own(std::move(buf));
    }
    store->add(std::move(v));
  }

  const TensorView* embd = store->find("model.embed_tokens.weight");
  if (!embd) fail("{}: missing tensor token_embd.weight", path);
  if (embd->shape.size() != 2 || embd->shape[1] != c.hidden)
    fail("{}: token_embd.weight has shape {}, expected [vocab, {}]", path, embd->shape_str(), c.hidden);
  c.vocab = embd->shape[0];
  if (g.has(p + "vocab_size") && g.get_int(p + "vocab_size") != c.vocab)
    fail("{}: {}vocab_size is {} but token_embd.weight has {} rows", path, p, g.get_int(p + "vocab_size"), c.vocab);
  c.tie_embeddings = !store->contains("lm_head.weight");
  c.attn_bias = store->contains("model.layers.0.self_attn.q_proj.bias");
  c.attn_out_bias = store->contains("model.layers.0.self_attn.o_proj.bias");
  c.mlp_bias = store->contains("model.layers.0.mlp.up_proj.bias");

  m.vocab = read_vocab(g);
  if (m.vocab.tokens.size() > size_t(c.vocab))
    fail("{}: {} tokens but token_embd.weight has only {} rows", path, m.vocab.tokens.size(), c.vocab);
  c.bos_id = m.vocab.bos_id;
  if (m.vocab.eos_id >= 0) c.eos_ids.push_back(m.vocab.eos_id);
  for (const char* key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    const int64_t id = g.get_int(key, -1);
    if (id >= 0 && id < c.vocab && std::find(c.eos_ids.begin(), c.eos_ids.end(), int32_t(id)) == c.eos_ids.end())
      c.eos_ids.push_back(int32_t(id));
  }
  c.validate(path);
  m.weights = std::move(store);
  return m;
}

namespace {

uint32_t file_type_of(DType t) {
  switch (t) {
    case DType::F32: return 0;
    case DType::F16: return 1;
    case DType::Q4_0: return 2;
    case DType::Q8_0: return 7;
    case DType::BF16: return 32;
    case DType::Q2_K: return 10;
    case DType::Q3_K: return 11;  // the *_S mixes: every matrix of one K type
    case DType::Q4_K: return 14;
    case DType::Q5_K: return 16;
    case DType::Q6_K: return 18;
    default: return 0;
  }
}

std::string model_name(const std::string& origin) {
  std::filesystem::path p(origin);
  if (p.filename().empty()) p = p.parent_path();
  std::string name = p.has_extension() ? p.stem().string() : p.filename().string();
  return name.empty() ? "anybit" : name;
}

// Encodes one row of fp32 as a plain float type.
void encode_row(const float* src, uint8_t* dst, int64_t n, DType t) {
  if (t == DType::F32) {
    std::memcpy(dst, src, size_t(n) * 4);
    return;
  }
  auto* d = reinterpret_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = t == DType::F16 ? f32_to_f16(src[i]) : f32_to_bf16(src[i]);
}

struct Entry {
  int group;
  int64_t layer;
  std::string gguf_name;
  const TensorView* t;
};

}  // namespace

void write_gguf_model_vocab(const std::string& path, const ModelConfig& c, const TensorStore& weights,
                            const GgufVocab& vocab, DType out_dtype, bool keep_dtype) {
  if (!keep_dtype && out_dtype != DType::F32 && out_dtype != DType::F16 && out_dtype != DType::BF16)
    fail("{}: GGUF output dtype must be f32, f16 or bf16 (got {})", path, dtype_name(out_dtype));
  std::string arch;
  if (c.arch == "llama" || c.arch == "mistral") arch = "llama";
  else if (c.arch == "qwen2") arch = "qwen2";
  else fail("{}: cannot write architecture '{}' as GGUF", path, c.arch);
  c.validate(path);
  const bool permute = arch == "llama";
  const std::string p = arch + ".";
  auto u32 = [](int64_t v) { return GgufValue::make_u32(uint32_t(v)); };

  std::vector<Entry> entries;
  const TensorView* q_proj = nullptr;
  for (const auto& [name, t] : weights.all()) {
    if (name.size() >= 19 && name.compare(name.size() - 19, 19, "rotary_emb.inv_freq") == 0) continue;
    if (name == "lm_head.weight" && c.tie_embeddings) continue;
    int64_t layer = -1;
    const std::string g = hf_to_gguf(name, &layer);
    if (g.empty()) fail("{}: tensor {} has no GGUF counterpart", path, name);
    if (layer >= c.n_layers) fail("{}: tensor {} but the model has {} layers", path, name, c.n_layers);
    const int group = layer >= 0 ? 1 : g == "token_embd.weight" ? 0 : g == "output_norm.weight" ? 2 : 3;
    entries.push_back({group, layer, g, &t});
    if (name == "model.layers.0.self_attn.q_proj.weight") q_proj = &t;
  }
  if (!c.tie_embeddings && !weights.contains("lm_head.weight"))
    fail("{}: lm_head.weight is missing and the config does not tie embeddings", weights.origin());
  // llama.cpp's own converter order: embeddings, blocks in numeric order, final norm, output.
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.group != b.group ? a.group < b.group : a.layer < b.layer;
  });

  GgufWriter w(32);
  w.set("general.architecture", GgufValue::make_str(arch));
  w.set("general.name", GgufValue::make_str(model_name(weights.origin())));
  w.set(p + "vocab_size", u32(c.vocab));
  w.set(p + "context_length", u32(c.max_position));
  w.set(p + "embedding_length", u32(c.hidden));
  w.set(p + "block_count", u32(c.n_layers));
  w.set(p + "feed_forward_length", u32(c.ffn));
  w.set(p + "rope.dimension_count", u32(c.head_dim));
  w.set(p + "attention.head_count", u32(c.n_heads));
  w.set(p + "attention.head_count_kv", u32(c.n_kv_heads));
  w.set(p + "attention.key_length", u32(c.head_dim));
  w.set(p + "attention.value_length", u32(c.head_dim));
  w.set(p + "rope.freq_base", GgufValue::make_f32(c.rope_theta));
  w.set(p + "attention.layer_norm_rms_epsilon", GgufValue::make_f32(c.rms_eps));
  if (c.rope_scaling.kind == RopeScaling::Kind::Linear) {
    w.set(p + "rope.scaling.type", GgufValue::make_str("linear"));
    w.set(p + "rope.scaling.factor", GgufValue::make_f32(c.rope_scaling.factor));
  }
  const DType main_dtype = keep_dtype ? (q_proj ? q_proj->dtype : DType::F32) : out_dtype;
  w.set("general.file_type", u32(file_type_of(main_dtype)));
  w.set("general.quantization_version", u32(2));

  if (!vocab.tokens.empty()) {
    if (vocab.tokens.size() > size_t(c.vocab))
      fail("{}: the tokenizer has {} tokens but the embedding only {} rows", path, vocab.tokens.size(), c.vocab);
    // llama.cpp wants one token per embedding row; pad as its converter does.
    std::vector<std::string> tokens = vocab.tokens;
    std::vector<int32_t> types = vocab.token_types;
    std::vector<float> scores = vocab.scores;
    if (types.empty()) types.assign(tokens.size(), 1);
    if (types.size() != tokens.size() || (!scores.empty() && scores.size() != tokens.size()))
      fail("{}: vocabulary has {} tokens but {} types and {} scores", path, tokens.size(), types.size(), scores.size());
    for (size_t i = tokens.size(); i < size_t(c.vocab); ++i) {
      tokens.push_back("[PAD" + std::to_string(i) + "]");
      types.push_back(5);  // unused
      if (!scores.empty()) scores.push_back(0.0f);
    }
    w.set("tokenizer.ggml.model", GgufValue::make_str(vocab.model.empty() ? "gpt2" : vocab.model));
    if (!vocab.pre.empty()) w.set("tokenizer.ggml.pre", GgufValue::make_str(vocab.pre));
    w.set("tokenizer.ggml.tokens", GgufValue::make_str_array(tokens));
    if (!scores.empty()) w.set("tokenizer.ggml.scores", GgufValue::make_f32_array(scores));
    w.set("tokenizer.ggml.token_type", GgufValue::make_i32_array(types));
    if (!vocab.merges.empty()) w.set("tokenizer.ggml.merges", GgufValue::make_str_array(vocab.merges));
    const std::pair<const char*, int32_t> ids[] = {{"tokenizer.ggml.bos_token_id", vocab.bos_id},
                                                   {"tokenizer.ggml.eos_token_id", vocab.eos_id},
                                                   {"tokenizer.ggml.unknown_token_id", vocab.unk_id},
                                                   {"tokenizer.ggml.padding_token_id", vocab.pad_id}};
    for (const auto& [key, id] : ids) {
      check_id(id, tokens.size(), key, path);
      if (id >= 0) w.set(key, u32(id));
    }
    w.set("tokenizer.ggml.add_bos_token", GgufValue::make_bool(vocab.add_bos));
    w.set("tokenizer.ggml.add_eos_token", GgufValue::make_bool(vocab.add_eos));
  }

  if (c.rope_scaling.kind == RopeScaling::Kind::Llama3) {
    if (arch != "llama") fail("{}: llama3 rope scaling cannot be written for architecture {}", path, arch);
    const std::vector<float> f = llama3_factors(c.head_dim, c.rope_theta, c.rope_scaling);
    w.add_tensor("rope_freqs.weight", 0, {int64_t(f.size())},
                 [f](uint8_t* dst) { std::memcpy(dst, f.data(), f.size() * 4); });
  }

  const auto non_f32_vector = std::find_if(entries.begin(), entries.end(), [&](const Entry& e) {
    return keep_dtype && e.t->shape.size() == 1 && e.t->dtype != DType::F32;
  });
  if (non_f32_vector != entries.end())
    spdlog::warn("{}: keeping {} as {}: llama.cpp's CPU backend only accepts f32 norms, so this file is for "
                 "anybit (convert with f32/f16/bf16 for llama.cpp)",
                 path, non_f32_vector->t->name, dtype_name(non_f32_vector->t->dtype));

  for (const Entry& e : entries) {
    const TensorView& t = *e.t;
    if (t.dtype == DType::QBITS)
      fail("{}: tensor {} is an anybit any-bit matrix, which GGUF cannot hold; convert the unquantized model",
           weights.origin(), t.name);
    const DType target = keep_dtype ? t.dtype : (t.shape.size() >= 2 ? out_dtype : DType::F32);
    const int64_t row_len = t.shape.empty() ? 1 : t.shape.back();
    const int64_t rows = row_len ? t.numel() / row_len : 0;
    if (row_len % dtype_block_size(t.dtype) != 0 || dtype_row_bytes(t.dtype, row_len) * size_t(rows) != t.nbytes)
      fail("{}: tensor {} holds {} bytes, inconsistent with {} {}", weights.origin(), t.name, t.nbytes,
           dtype_name(t.dtype), t.shape_str());
    if (target != t.dtype && (t.dtype == DType::I32 || t.dtype == DType::I64))
      fail("{}: tensor {} is an integer tensor; cannot convert it to {}", weights.origin(), t.name,
           dtype_name(target));

    const bool is_q = e.gguf_name.find(".attn_q.") != std::string::npos;
    const bool is_k = e.gguf_name.find(".attn_k.") != std::string::npos;
    const int64_t heads = (permute && (is_q || is_k)) ? (is_q ? c.n_heads : c.n_kv_heads) : 0;
    if (heads) {
      if (t.shape.empty() || t.shape[0] != heads * c.head_dim)
        fail("{}: tensor {} has shape {}, expected {} rows ({} heads x {})", weights.origin(), t.name, t.shape_str(),
             heads * c.head_dim, heads, c.head_dim);
      if (t.shape.size() == 1 && dtype_block_size(target) != 1)
        fail("{}: tensor {} is a block-quantized vector; cannot reorder its rows", weights.origin(), t.name);
    }
    const size_t out_row_bytes = dtype_row_bytes(target, row_len);
    const size_t out_bytes = out_row_bytes * size_t(rows);
    const size_t perm_row_bytes = (heads && t.shape.size() == 1) ? dtype_row_bytes(target, 1) : out_row_bytes;
    const int64_t head_dim = c.head_dim;
    w.add_tensor(e.gguf_name, dtype_to_ggml_type(target), t.shape,
                 [&t, target, row_len, rows, out_row_bytes, out_bytes, heads, head_dim, perm_row_bytes](uint8_t* dst) {
                   std::vector<uint8_t> tmp;
                   uint8_t* out = dst;
                   if (heads) {
                     tmp.resize(out_bytes);
                     out = tmp.data();
                   }
                   if (target == t.dtype) {
                     std::memcpy(out, t.data, out_bytes);
                   } else {
                     std::vector<float> f(static_cast<size_t>(row_len));
                     const size_t in_row_bytes = dtype_row_bytes(t.dtype, row_len);
                     auto* src = static_cast<const uint8_t*>(t.data);
                     for (int64_t r = 0; r < rows; ++r) {
                       dequantize_row(t.dtype, src + size_t(r) * in_row_bytes, f.data(), row_len);
                       encode_row(f.data(), out + size_t(r) * out_row_bytes, row_len, target);
                     }
                   }
                   if (heads) permute_qk_rows(tmp.data(), dst, heads, head_dim, perm_row_bytes, /*to_gguf=*/true);
                 });
  }
  w.write(path);
}

void write_gguf_model(const std::string& path, const ModelConfig& config, const TensorStore& weights,
                      const Tokenizer& tokenizer, DType out_dtype, bool keep_dtype) {
  write_gguf_model_vocab(path, config, weights, tokenizer.to_gguf_vocab(), out_dtype, keep_dtype);
}

}  // namespace anybit
