#include "formats/quant_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>

#include "core/error.h"
#include "core/mapped_file.h"
#include "quant/group_quant.h"

namespace anybit {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const char* const kSuffixes[] = {".qcodes", ".qscales", ".qzeros", ".qinput_scale"};

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// Splits "W.qscales" into ("W", ".qscales"); returns false for a plain tensor name.
bool split_part(const std::string& name, std::string& base, std::string& part) {
  for (const char* s : kSuffixes)
    if (ends_with(name, s)) {
      base = name.substr(0, name.size() - std::strlen(s));
      part = s;
      return true;
    }
  return false;
}

std::string st_dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    default: fail("safetensors: dtype {} cannot be stored", dtype_name(t));
  }
}

size_t elem_size(DType t) { return dtype_row_bytes(t, 1); }

float load_meta(const uint8_t* p, DType t) {
  if (t == DType::F32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  return t == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

void store_meta(float v, DType t, uint8_t* p) {
  if (t == DType::F32) {
    std::memcpy(p, &v, 4);
    return;
  }
  const uint16_t h = t == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
  std::memcpy(p, &h, 2);
}

DType parse_scale_dtype(const std::string& s) {
  if (s == "f16") return DType::F16;
  if (s == "bf16") return DType::BF16;
  if (s == "f32") return DType::F32;
  return DType::I64;  // "unknown" marker, rejected by the caller
}

struct RawTensor {
  std::string st_dtype;  // as written in the header
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
};

struct QMeta {
  int bits = 0, group = 0, act_bits = 0;
  bool asym = false;
  DType scale_dtype = DType::F16;
  std::string quantizer;
  int64_t rows = 0, cols = 0;
};

QMeta parse_qmeta(const std::string& path, const std::string& name, const std::string& text) {
  QMeta m;
  try {
    const json j = json::parse(text);
    m.bits = j.at("bits").get<int>();
    m.group = j.at("group").get<int>();
    m.asym = !j.at("sym").get<bool>();
    m.act_bits = j.value("act_bits", 0);
    const std::string sd = j.at("scale_dtype").get<std::string>();
    m.scale_dtype = parse_scale_dtype(sd);
    if (m.scale_dtype == DType::I64) fail("{}: {} has unknown scale_dtype '{}' (f16, bf16, f32)", path, name, sd);
    m.quantizer = j.at("quantizer").get<std::string>();
    const auto& shape = j.at("shape");
    if (!shape.is_array() || shape.size() != 2) fail("{}: {} metadata shape must be [rows, cols]", path, name);
    m.rows = shape[0].get<int64_t>();
    m.cols = shape[1].get<int64_t>();
  } catch (const json::exception& e) {
    fail("{}: malformed quantization metadata for {}: {}", path, name, e.what());
  }
  if (m.bits < 2 || m.bits > 8) fail("{}: {} has bits {} (must be 2..8)", path, name, m.bits);
  if (m.group != 32 && m.group != 64 && m.group != 128)
    fail("{}: {} has group {} (must be 32, 64 or 128)", path, name, m.group);
  if (m.rows <= 0 || m.cols <= 0 || m.rows > (int64_t(1) << 31) || m.cols > (int64_t(1) << 31))
    fail("{}: {} has an invalid shape [{}, {}]", path, name, m.rows, m.cols);
  if (m.cols % m.group != 0) fail("{}: {} group {} does not divide the row length {}", path, name, m.group, m.cols);
  if (m.act_bits != 0 && m.act_bits != 8) fail("{}: {} has act_bits {} (must be 0 or 8)", path, name, m.act_bits);
  if (!is_known_quantizer(m.quantizer)) fail("{}: {} names an unknown quantizer '{}'", path, name, m.quantizer);
  return m;
}

void expect_tensor(const std::string& path, const std::string& name, const RawTensor* t, const std::string& dtype,
                   const std::vector<int64_t>& shape) {
  if (!t) fail("{}: quantized tensor {} is missing", path, name);
  if (t->st_dtype != dtype) fail("{}: {} has dtype {}, expected {}", path, name, t->st_dtype, dtype);
  if (t->shape != shape) {
    TensorView a, b;
    a.shape = t->shape;
    b.shape = shape;
    fail("{}: {} has shape {}, expected {} (truncated or mismatched)", path, name, a.shape_str(), b.shape_str());
  }
}

std::shared_ptr<QuantizedWeight> build_weight(const std::string& path, const std::string& name, const QMeta& m,
                                              const std::map<std::string, RawTensor>& parts) {
  auto find = [&](const char* suf) -> const RawTensor* {
    auto it = parts.find(name + suf);
    return it == parts.end() ? nullptr : &it->second;
  };
  auto w = std::make_shared<QuantizedWeight>();
  w->bits = m.bits;
  w->group = m.group;
  w->asymmetric = m.asym;
  w->act_bits = m.act_bits;
  w->rows = m.rows;
  w->cols = m.cols;
  w->quantizer = m.quantizer;
  const int64_t G = m.cols / m.group;
  const std::string sd = st_dtype_name(m.scale_dtype);

  const RawTensor* codes = find(".qcodes");
  expect_tensor(path, name + ".qcodes", codes, "U8", {m.rows, int64_t(w->row_code_bytes())});
  w->codes.assign(codes->data, codes->data + codes->nbytes);

  const RawTensor* scales = find(".qscales");
  expect_tensor(path, name + ".qscales", scales, sd, {m.rows, G});
  const size_t es = elem_size(m.scale_dtype);
  w->scales.resize(size_t(m.rows * G));
  for (size_t i = 0; i < w->scales.size(); ++i) {
    w->scales[i] = load_meta(scales->data + i * es, m.scale_dtype);
    if (!std::isfinite(w->scales[i])) fail("{}: {}.qscales holds a non-finite scale", path, name);
  }
  const RawTensor* zeros = find(".qzeros");
  if (m.asym) {
    expect_tensor(path, name + ".qzeros", zeros, sd, {m.rows, G});
    w->zeros.resize(w->scales.size());
    for (size_t i = 0; i < w->zeros.size(); ++i) {
      w->zeros[i] = load_meta(zeros->data + i * es, m.scale_dtype);
      if (!std::isfinite(w->zeros[i])) fail("{}: {}.qzeros holds a non-finite zero point", path, name);
    }
  } else if (zeros) {
    fail("{}: {} is symmetric but has a .qzeros tensor", path, name);
  }
  if (const RawTensor* is = find(".qinput_scale")) {
    expect_tensor(path, name + ".qinput_scale", is, "F32", {m.cols});
    w->input_scale.resize(size_t(m.cols));
    std::memcpy(w->input_scale.data(), is->data, size_t(m.cols) * 4);
    for (float v : w->input_scale)
      if (!(v > 0.0f) || !std::isfinite(v)) fail("{}: {}.qinput_scale holds a non-positive or non-finite value", path, name);
  }
  return w;
}

size_t quantized_bytes(const QuantizedWeight& w) {
  return w.codes.size() + 4 * (w.scales.size() + w.zeros.size() + w.input_scale.size());
}

}  // namespace

bool is_known_quantizer(const std::string& name) {
  static const std::set<std::string> known = {"rtn", "rtn-clip", "awq", "gptq", "awq-gptq"};
  return known.count(name) > 0;
}

bool is_quant_checkpoint(const std::string& dir) {
  std::error_code ec;
  return fs::is_directory(dir, ec) && fs::exists(fs::path(dir) / kQuantConfigFile, ec);
}

void add_quantized(TensorStore& store, const std::string& name, std::shared_ptr<QuantizedWeight> w) {
  TensorView t;
  t.name = name;
  t.dtype = DType::QBITS;
  t.shape = {w->rows, w->cols};
  t.data = w.get();
  t.nbytes = quantized_bytes(*w);
  store.add(std::move(t));
  // The store keeps its mapped files alive; an aliasing pointer (no MappedFile, shared
  // ownership of the weight) makes it keep the weight alive the same way.
  store.keep_alive(std::shared_ptr<MappedFile>(std::move(w), nullptr));
}

const QuantizedWeight& quantized_of(const TensorView& t) {
  if (t.dtype != DType::QBITS || !t.data) fail("tensor {} is not a quantized (qbits) matrix", t.name);
  return *static_cast<const QuantizedWeight*>(t.data);
}

void read_quant_safetensors(const std::string& path, TensorStore& store) {
  auto file = MappedFile::open(path);
  const size_t size = file->size();
  if (size < 8) fail("{}: truncated safetensors file ({} bytes, no header)", path, size);
  uint64_t header_len = 0;
  std::memcpy(&header_len, file->data(), 8);
  if (header_len > size - 8) fail("{}: truncated safetensors file (header of {} bytes, file has {})", path, header_len, size);
  if (header_len > (100u << 20)) fail("{}: safetensors header too large ({} bytes)", path, header_len);
  json header;
  try {
    header = json::parse(file->data() + 8, file->data() + 8 + header_len);
  } catch (const json::exception& e) {
    fail("{}: corrupted safetensors header: {}", path, e.what());
  }
  if (!header.is_object()) fail("{}: safetensors header is not a JSON object", path);
  const uint8_t* base = file->data() + 8 + header_len;
  const size_t data_size = size - 8 - header_len;

  std::map<std::string, std::string> meta;
  if (header.contains("__metadata__")) {
    const json& md = header["__metadata__"];
    if (!md.is_object()) fail("{}: __metadata__ is not an object", path);
    for (auto& [k, v] : md.items()) {
      if (!v.is_string()) fail("{}: __metadata__ value for {} is not a string", path, k);
      meta[k] = v.get<std::string>();
    }
  }
  auto fmt_it = meta.find("format");
  if (fmt_it == meta.end() || fmt_it->second != kQuantFormatName)
    fail("{}: not an {} file (__metadata__.format is missing or different)", path, kQuantFormatName);
  if (meta.count("format_version") && meta["format_version"] != std::to_string(kQuantFormatVersion))
    fail("{}: unsupported {} format_version {}", path, kQuantFormatName, meta["format_version"]);

  std::map<std::string, RawTensor> parts;
  std::vector<std::pair<size_t, size_t>> ranges;
  std::vector<TensorView> plain;
  for (auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    RawTensor r;
    try {
      r.st_dtype = info.at("dtype").get<std::string>();
      for (const auto& d : info.at("shape")) {
        const int64_t v = d.get<int64_t>();
        if (v < 0 || v > (int64_t(1) << 40)) fail("{}: tensor {} has an invalid dimension {}", path, name, v);
        r.shape.push_back(v);
      }
      const auto& offs = info.at("data_offsets");
      if (!offs.is_array() || offs.size() != 2) fail("{}: tensor {} has malformed data_offsets", path, name);
      const uint64_t begin = offs[0].get<uint64_t>(), end = offs[1].get<uint64_t>();
      if (begin > end || end > data_size)
        fail("{}: tensor {} data [{}, {}) lies outside the file's {} data bytes (truncated file?)", path, name, begin,
             end, data_size);
      r.data = base + begin;
      r.nbytes = end - begin;
      ranges.emplace_back(begin, end);
    } catch (const json::exception& e) {
      fail("{}: malformed entry for tensor {}: {}", path, name, e.what());
    }
    int64_t numel = 1;
    for (int64_t d : r.shape) {
      if (d != 0 && numel > (int64_t(1) << 40) / d) fail("{}: tensor {} is too large", path, name);
      numel *= d;
    }
    std::string qbase, qpart;
    if (split_part(name, qbase, qpart)) {
      size_t es = r.st_dtype == "U8" ? 1 : r.st_dtype == "F32" ? 4 : (r.st_dtype == "F16" || r.st_dtype == "BF16") ? 2 : 0;
      if (es == 0) fail("{}: tensor {} has unsupported dtype {}", path, name, r.st_dtype);
      if (r.nbytes != size_t(numel) * es)
        fail("{}: tensor {} has {} bytes, its shape needs {} (truncated?)", path, name, r.nbytes, size_t(numel) * es);
      parts.emplace(name, r);
      continue;
    }
    TensorView t;
    t.name = name;
    if (r.st_dtype == "F32") t.dtype = DType::F32;
    else if (r.st_dtype == "F16") t.dtype = DType::F16;
    else if (r.st_dtype == "BF16") t.dtype = DType::BF16;
    else if (r.st_dtype == "I32") t.dtype = DType::I32;
    else if (r.st_dtype == "I64") t.dtype = DType::I64;
    else fail("{}: tensor {} has unsupported dtype {}", path, name, r.st_dtype);
    t.shape = r.shape;
    const size_t want = dtype_row_bytes(t.dtype, numel);
    if (r.nbytes != want)
      fail("{}: tensor {} has {} bytes, its shape {} and dtype {} need {}", path, name, r.nbytes, t.shape_str(),
           dtype_name(t.dtype), want);
    t.data = r.data;
    t.nbytes = want;
    plain.push_back(std::move(t));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) fail("{}: tensors overlap in the data section", path);

  // Every quantized part must belong to a described weight, and every description to parts.
  std::set<std::string> described;
  for (const auto& [k, v] : meta)
    if (k != "format" && k != "format_version") described.insert(k);
  for (const auto& [pname, _] : parts) {
    std::string b, s;
    split_part(pname, b, s);
    if (!described.count(b)) fail("{}: tensor {} has no quantization metadata for {}", path, pname, b);
  }
  std::vector<std::pair<std::string, std::shared_ptr<QuantizedWeight>>> weights;
  for (const auto& name : described) {
    const QMeta m = parse_qmeta(path, name, meta[name]);
    weights.emplace_back(name, build_weight(path, name, m, parts));
  }
  for (auto& t : plain) store.add(std::move(t));
  for (auto& [name, w] : weights) add_quantized(store, name, std::move(w));
  store.keep_alive(std::move(file));
}

namespace {

GgufVocab read_vocab_json(const std::string& path) {
  GgufVocab v;
  try {
    const json j = json::parse(read_text_file(path));
    v.model = j.at("model").get<std::string>();
    v.pre = j.value("pre", std::string());
    v.tokens = j.at("tokens").get<std::vector<std::string>>();
    v.scores = j.value("scores", std::vector<float>());
    v.token_types = j.value("token_types", std::vector<int32_t>());
    v.merges = j.value("merges", std::vector<std::string>());
    v.bos_id = j.value("bos_id", -1);
    v.eos_id = j.value("eos_id", -1);
    v.unk_id = j.value("unk_id", -1);
    v.pad_id = j.value("pad_id", -1);
    v.add_bos = j.value("add_bos", true);
    v.add_eos = j.value("add_eos", false);
  } catch (const json::exception& e) {
    fail("{}: malformed vocabulary: {}", path, e.what());
  }
  return v;
}

}  // namespace

ModelFiles load_quant_folder(const std::string& dir) {
  ModelFiles m;
  m.path = dir;
  m.format = kQuantFormatName;
  const fs::path qc = fs::path(dir) / kQuantConfigFile;
  try {
    const json j = json::parse(read_text_file(qc.string()));
    if (!j.is_object() || j.value("format", std::string()) != kQuantFormatName)
      fail("{}: not an {} quantization config", qc.string(), kQuantFormatName);
    if (j.value("format_version", 0) != kQuantFormatVersion)
      fail("{}: unsupported format_version {}", qc.string(), j.value("format_version", 0));
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", qc.string(), e.what());
  }
  const fs::path config = fs::path(dir) / "config.json";
  if (!fs::exists(config)) fail("{}: not a model folder (no config.json)", dir);
  m.config = parse_hf_config(read_text_file(config.string()), config.string());
  const fs::path gen = fs::path(dir) / "generation_config.json";
  if (fs::exists(gen)) merge_generation_config(read_text_file(gen.string()), m.config, gen.string());

  auto store = std::make_shared<TensorStore>();
  store->set_origin(dir);
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  if (files.empty()) fail("{}: no .safetensors files in the quantized model folder", dir);
  for (const auto& f : files) read_quant_safetensors(f, *store);
  m.weights = std::move(store);

  const fs::path tok = fs::path(dir) / "tokenizer.json";
  const fs::path vocab = fs::path(dir) / "gguf_vocab.json";
  if (fs::exists(tok)) {
    m.tokenizer = Tokenizer::from_hf_json_file(tok.string());
  } else if (fs::exists(vocab)) {
    m.tokenizer = Tokenizer::from_gguf_vocab(read_vocab_json(vocab.string()), vocab.string());
    const fs::path tmpl = fs::path(dir) / "chat_template.jinja";
    if (fs::exists(tmpl)) m.tokenizer.set_chat_template(read_text_file(tmpl.string()));
  } else {
    fail("{}: no tokenizer.json or gguf_vocab.json in the model folder", dir);
  }
  return m;
}

std::string config_to_hf_json(const ModelConfig& c) {
  json j;
  const char* arch_class = c.arch == "qwen2" ? "Qwen2ForCausalLM" : c.arch == "mistral" ? "MistralForCausalLM"
                                                                                         : "LlamaForCausalLM";
  j["architectures"] = {arch_class};
  j["model_type"] = c.arch;
  j["hidden_size"] = c.hidden;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["head_dim"] = c.head_dim;
  j["intermediate_size"] = c.ffn;
  j["vocab_size"] = c.vocab;
  j["max_position_embeddings"] = c.max_position;
  j["rms_norm_eps"] = c.rms_eps;
  j["rope_theta"] = c.rope_theta;
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = c.tie_embeddings;
  if (c.arch != "qwen2") j["attention_bias"] = c.attn_bias;
  j["mlp_bias"] = c.mlp_bias;
  if (c.rope_scaling.kind == RopeScaling::Kind::Linear) {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", c.rope_scaling.factor}};
  } else if (c.rope_scaling.kind == RopeScaling::Kind::Llama3) {
    const auto& s = c.rope_scaling;
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", s.factor},
                         {"low_freq_factor", s.low_freq_factor},
                         {"high_freq_factor", s.high_freq_factor},
                         {"original_max_position_embeddings", s.original_max_position}};
  }
  if (c.sliding_window > 0) {
    j["sliding_window"] = c.sliding_window;
    if (c.arch == "qwen2") j["use_sliding_window"] = true;
  }
  if (c.bos_id >= 0) j["bos_token_id"] = c.bos_id;
  if (c.eos_ids.size() == 1) j["eos_token_id"] = c.eos_ids[0];
  else if (!c.eos_ids.empty()) j["eos_token_id"] = c.eos_ids;
  return j.dump(2) + "\n";
}

namespace {

// One tensor to write: its header entry and a producer of its bytes.
struct OutTensor {
  std::string name, dtype;
  std::vector<int64_t> shape;
  size_t nbytes = 0;
  std::function<void(std::ostream&)> write;
};

void add_plain(std::vector<OutTensor>& out, const TensorView& t) {
  OutTensor o;
  o.name = t.name;
  o.dtype = st_dtype_name(t.dtype);
  o.shape = t.shape;
  o.nbytes = t.nbytes;
  const char* p = static_cast<const char*>(t.data);
  o.write = [p, n = t.nbytes](std::ostream& s) { s.write(p, std::streamsize(n)); };
  out.push_back(std::move(o));
}

void add_meta_tensor(std::vector<OutTensor>& out, const std::string& name, const std::vector<float>& v,
                     std::vector<int64_t> shape, DType dt) {
  OutTensor o;
  o.name = name;
  o.dtype = st_dtype_name(dt);
  o.shape = std::move(shape);
  o.nbytes = v.size() * elem_size(dt);
  const std::vector<float>* src = &v;
  o.write = [src, dt](std::ostream& s) {
    std::vector<uint8_t> buf(src->size() * elem_size(dt));
    for (size_t i = 0; i < src->size(); ++i) store_meta((*src)[i], dt, buf.data() + i * elem_size(dt));
    s.write(reinterpret_cast<const char*>(buf.data()), std::streamsize(buf.size()));
  };
  out.push_back(std::move(o));
}

std::string qmeta_json(const QuantizedWeight& w, DType scale_dtype) {
  json j;
  j["bits"] = w.bits;
  j["group"] = w.group;
  j["sym"] = !w.asymmetric;
  j["scale_dtype"] = scale_dtype == DType::F16 ? "f16" : scale_dtype == DType::BF16 ? "bf16" : "f32";
  j["quantizer"] = w.quantizer;
  j["act_bits"] = w.act_bits;
  j["shape"] = {w.rows, w.cols};
  return j.dump();
}

void write_shard(const std::string& path, std::vector<OutTensor>& ts, const std::map<std::string, std::string>& meta) {
  // Wider element types first, so every tensor starts aligned to its element size.
  auto rank = [](const std::string& d) { return d == "I64" ? 0 : (d == "F32" || d == "I32") ? 1 : d == "U8" ? 3 : 2; };
  std::stable_sort(ts.begin(), ts.end(), [&](const OutTensor& a, const OutTensor& b) { return rank(a.dtype) < rank(b.dtype); });
  json header = json::object();
  json md = json::object();
  for (const auto& [k, v] : meta) md[k] = v;
  header["__metadata__"] = md;
  size_t off = 0;
  for (const auto& t : ts) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.nbytes}}};
    off += t.nbytes;
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) fail("{}: cannot create file", tmp);
    const uint64_t len = h.size();
    f.write(reinterpret_cast<const char*>(&len), 8);
    f.write(h.data(), std::streamsize(h.size()));
    for (const auto& t : ts) t.write(f);
    f.flush();
    if (!f) fail("{}: write failed (disk full?)", tmp);
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) fail("{}: cannot rename into place: {}", path, ec.message());
}

}  // namespace

void write_quant_folder(const std::string& dir, const ModelConfig& config, const TensorStore& weights,
                        const Tokenizer& tokenizer, const QuantWriteOptions& opts) {
  if (opts.scale_dtype != DType::F16 && opts.scale_dtype != DType::BF16 && opts.scale_dtype != DType::F32)
    fail("{}: scale dtype must be f16, bf16 or f32", dir);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (!fs::is_directory(dir, ec)) fail("{}: cannot create the output folder", dir);
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors" || e.path().filename() == "model.safetensors.index.json")
      fs::remove(e.path(), ec);

  // Tensors in name order, grouped into shards of at most opts.shard_bytes.
  std::vector<std::vector<OutTensor>> shards(1);
  std::vector<std::map<std::string, std::string>> metas(1);
  size_t cur = 0;
  for (const auto& [name, t] : weights.all()) {
    std::vector<OutTensor> ts;
    std::string meta;
    if (t.dtype == DType::QBITS) {
      const QuantizedWeight& w = quantized_of(t);
      bool exact = true;
      for (float s : w.scales) exact = exact && s == quant::round_meta(s, opts.scale_dtype);
      for (float z : w.zeros) exact = exact && z == quant::round_meta(z, opts.scale_dtype);
      if (!exact)
        fail("{}: {} has scales or zeros that {} cannot store exactly (quantized for another scale dtype)", dir, name,
               dtype_name(opts.scale_dtype));
      OutTensor c;
      c.name = name + ".qcodes";
      c.dtype = "U8";
      c.shape = {w.rows, int64_t(w.row_code_bytes())};
      c.nbytes = w.codes.size();
      c.write = [&w](std::ostream& s) { s.write(reinterpret_cast<const char*>(w.codes.data()), std::streamsize(w.codes.size())); };
      ts.push_back(std::move(c));
      add_meta_tensor(ts, name + ".qscales", w.scales, {w.rows, w.groups_per_row()}, opts.scale_dtype);
      if (w.asymmetric) add_meta_tensor(ts, name + ".qzeros", w.zeros, {w.rows, w.groups_per_row()}, opts.scale_dtype);
      if (!w.input_scale.empty()) add_meta_tensor(ts, name + ".qinput_scale", w.input_scale, {w.cols}, DType::F32);
      meta = qmeta_json(w, opts.scale_dtype);
    } else {
      add_plain(ts, t);
    }
    size_t bytes = 0;
    for (const auto& o : ts) bytes += o.nbytes;
    if (cur > 0 && cur + bytes > opts.shard_bytes) {
      shards.emplace_back();
      metas.emplace_back();
      cur = 0;
    }
    cur += bytes;
    for (auto& o : ts) shards.back().push_back(std::move(o));
    if (!meta.empty()) metas.back()[name] = meta;
  }
  const size_t n = shards.size();
  for (size_t i = 0; i < n; ++i) {
    metas[i]["format"] = kQuantFormatName;
    metas[i]["format_version"] = std::to_string(kQuantFormatVersion);
    const std::string file = n == 1 ? "model.safetensors" : fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, n);
    write_shard((fs::path(dir) / file).string(), shards[i], metas[i]);
  }

  auto write_text = [&](const std::string& name, const std::string& text) {
    std::ofstream f(fs::path(dir) / name, std::ios::binary | std::ios::trunc);
    f << text;
    if (!f) fail("{}: cannot write {}", dir, name);
  };
  write_text("config.json", config_to_hf_json(config));
  json qc = opts.summary.is_object() ? opts.summary : json::object();
  qc["format"] = kQuantFormatName;
  qc["format_version"] = kQuantFormatVersion;
  write_text(kQuantConfigFile, qc.dump(2) + "\n");

  if (!opts.tokenizer_source.empty()) {
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                          "chat_template.jinja"}) {
      const fs::path src = fs::path(opts.tokenizer_source) / f;
      if (fs::exists(src)) {
        fs::copy_file(src, fs::path(dir) / f, fs::copy_options::overwrite_existing, ec);
        if (ec) fail("{}: cannot copy {}: {}", dir, src.string(), ec.message());
      }
    }
  } else {
    const GgufVocab v = tokenizer.to_gguf_vocab();
    json j;
    j["model"] = v.model;
    j["pre"] = v.pre;
    j["tokens"] = v.tokens;
    j["scores"] = v.scores;
    j["token_types"] = v.token_types;
    j["merges"] = v.merges;
    j["bos_id"] = v.bos_id;
    j["eos_id"] = v.eos_id;
    j["unk_id"] = v.unk_id;
    j["pad_id"] = v.pad_id;
    j["add_bos"] = v.add_bos;
    j["add_eos"] = v.add_eos;
    write_text("gguf_vocab.json", j.dump() + "\n");
    if (!tokenizer.chat_template().empty()) write_text("chat_template.jinja", tokenizer.chat_template());
  }
}

}  // namespace anybit
