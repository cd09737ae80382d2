// Tokenizer::from_hf_json_file: Hugging Face tokenizer.json (BPE model) plus the
// tokenizer_config.json / generation_config.json that usually sit next to it.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"

namespace anybit {
namespace {

using json = nlohmann::json;

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("{}: cannot open file", path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json parse_json(const std::string& path) {
  const std::string text = read_text(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON ({})", path, e.what());
  }
}

bool get_bool(const json& j, const char* key, bool dflt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  return it->get<bool>();
}

std::string get_str(const json& j, const char* key, const std::string& dflt = "") {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  return it->get<std::string>();
}

// {"String": "x"} or {"Regex": "x"} -> (text, is_regex)
std::pair<std::string, bool> parse_pattern(const json& j, const std::string& path) {
  if (j.is_object()) {
    if (j.contains("Regex")) return {j.at("Regex").get<std::string>(), true};
    if (j.contains("String")) return {j.at("String").get<std::string>(), false};
  }
  fail("{}: pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}", path);
}

// A token name in tokenizer_config.json is a string, {"content": ...} or null.
std::string token_name(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return {};
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content")) return it->at("content").get<std::string>();
  return {};
}

class HfLoader {
 public:
  HfLoader(TokenizerImpl& t, const std::string& path) : t_(t), path_(path) {}

  void load(const json& root) {
    if (!root.is_object()) fail("{}: top level is not a JSON object", path_);
    auto model = root.find("model");
    if (model == root.end() || !model->is_object()) fail("{}: no \"model\" section", path_);
    load_vocab(*model, root);
    if (auto it = root.find("normalizer"); it != root.end()) parse_normalizer(*it);
    if (auto it = root.find("pre_tokenizer"); it != root.end()) parse_pre(*it);
    if (auto it = root.find("post_processor"); it != root.end()) parse_post(*it);
    if (auto it = root.find("decoder"); it != root.end()) parse_decoder(*it);
    t_.gguf_pre = detect_gguf_pre();
    t_.finalize();
  }

 private:
  void load_vocab(const json& model, const json& root) {
    const std::string type = get_str(model, "type", model.contains("merges") ? "BPE" : "");
    if (type != "BPE") fail("{}: unsupported tokenizer model type '{}' (only BPE is supported)", path_, type);
    auto vocab_it = model.find("vocab");
    if (vocab_it == model.end() || !vocab_it->is_object()) fail("{}: model has no \"vocab\" object", path_);
    StrIdMap vocab;
    int64_t max_id = -1;
    for (auto it = vocab_it->begin(); it != vocab_it->end(); ++it) {
      const int64_t id = it.value().get<int64_t>();
      if (id < 0 || id > (1 << 26)) fail("{}: token '{}' has invalid id {}", path_, it.key(), id);
      vocab[it.key()] = static_cast<int32_t>(id);
      max_id = std::max(max_id, id);
    }
    std::vector<AddedToken> added;
    if (auto it = root.find("added_tokens"); it != root.end() && it->is_array()) {
      for (const json& a : *it) {
        AddedToken t;
        t.content = a.at("content").get<std::string>();
        const int64_t id = a.at("id").get<int64_t>();
        if (id < 0 || id > (1 << 26)) fail("{}: added token '{}' has invalid id {}", path_, t.content, id);
        if (t.content.empty()) fail("{}: added token {} has empty content", path_, id);
        t.id = static_cast<int32_t>(id);
        t.special = get_bool(a, "special", false);
        t.lstrip = get_bool(a, "lstrip", false);
        t.rstrip = get_bool(a, "rstrip", false);
        t.single_word = get_bool(a, "single_word", false);
        t.normalized = get_bool(a, "normalized", !t.special);
        max_id = std::max(max_id, id);
        added.push_back(std::move(t));
      }
    }
    t_.id_to_token.assign(static_cast<size_t>(max_id + 1), std::string());
    for (const auto& [text, id] : vocab) t_.id_to_token[id] = text;
    t_.token_to_id = vocab;
    for (const AddedToken& a : added) {
      t_.id_to_token[a.id] = a.content;
      t_.token_to_id[a.content] = a.id;
    }
    t_.added = std::move(added);

    std::vector<std::pair<std::string, std::string>> merges;
    if (auto it = model.find("merges"); it != model.end() && !it->is_null()) {
      if (!it->is_array()) fail("{}: \"merges\" is not an array", path_);
      merges.reserve(it->size());
      for (const json& m : *it) {
        if (m.is_string()) {
          const std::string s = m.get<std::string>();
          const size_t sp = s.find(' ', 1);
          if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
            fail("{}: merge '{}' is not two space-separated tokens", path_, s);
          merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
        } else if (m.is_array() && m.size() == 2) {
          merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
        } else {
          fail("{}: a merge must be \"a b\" or [\"a\", \"b\"]", path_);
        }
      }
    }
    if (!get_str(model, "continuing_subword_prefix").empty() || !get_str(model, "end_of_word_suffix").empty())
      fail("{}: BPE continuing_subword_prefix/end_of_word_suffix are not supported", path_);
    BpeOptions opt;
    opt.byte_fallback = get_bool(model, "byte_fallback", false);
    opt.ignore_merges = get_bool(model, "ignore_merges", false);
    opt.fuse_unk = get_bool(model, "fuse_unk", false);
    const std::string unk = get_str(model, "unk_token");
    if (!unk.empty()) {
      auto u = vocab.find(unk);
      if (u == vocab.end()) fail("{}: unk_token '{}' is not in the vocab", path_, unk);
      opt.unk_id = u->second;
    }
    t_.bpe.build(vocab, merges, opt, path_);
  }

  void parse_normalizer(const json& j) {
    if (j.is_null()) return;
    const std::string type = get_str(j, "type");
    if (type == "Sequence") {
      for (const json& n : j.at("normalizers")) parse_normalizer(n);
    } else if (type == "Prepend") {
      t_.normalizers.emplace_back(NormStep::kPrepend, j.at("prepend").get<std::string>());
    } else if (type == "Replace") {
      auto [pat, is_re] = parse_pattern(j.at("pattern"), path_);
      NormStep st(NormStep::kReplace, pat, j.at("content").get<std::string>());
      if (is_re) st.re = std::make_shared<Regex>(pat, path_);
      t_.normalizers.push_back(std::move(st));
    } else if (type == "Strip") {
      NormStep st(NormStep::kStrip);
      st.left = get_bool(j, "strip_left", true);
      st.right = get_bool(j, "strip_right", true);
      t_.normalizers.push_back(std::move(st));
    } else if (type == "Lowercase") {
      t_.normalizers.emplace_back(NormStep::kLowercase);
    } else if (type == "NFC" || type == "NFKC") {
      // Treated as identity: text reaching an LLM tokenizer is almost always already
      // composed, and full Unicode normalization tables are out of scope here.
    } else if (type == "NFD" || type == "NFKD") {
      spdlog::warn("{}: normalizer {} is treated as identity", path_, type);
    } else {
      fail("{}: unsupported normalizer type '{}'", path_, type);
    }
  }

  static SplitBehavior parse_behavior(const std::string& b, const std::string& path) {
    if (b == "Removed") return SplitBehavior::kRemoved;
    if (b == "Isolated") return SplitBehavior::kIsolated;
    if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
    if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
    if (b == "Contiguous") return SplitBehavior::kContiguous;
    fail("{}: unknown split behavior '{}'", path, b);
  }

  void add_regex_split(const std::string& pattern, SplitBehavior behavior, bool invert) {
    PreStep st(PreStep::kSplit);
    st.re = std::make_shared<Regex>(pattern, path_);
    st.behavior = behavior;
    st.invert = invert;
    t_.pre.push_back(std::move(st));
  }

  void parse_pre(const json& j) {
    if (j.is_null()) return;
    const std::string type = get_str(j, "type");
    if (type == "Sequence") {
      for (const json& p : j.at("pretokenizers")) parse_pre(p);
    } else if (type == "ByteLevel") {
      PreStep st(PreStep::kByteLevel);
      st.add_prefix_space = get_bool(j, "add_prefix_space", true);
      st.use_regex = get_bool(j, "use_regex", true);
      if (st.use_regex) st.re = std::make_shared<Regex>(kGpt2Pattern, path_);
      t_.pre.push_back(std::move(st));
    } else if (type == "Split") {
      auto [pat, is_re] = parse_pattern(j.at("pattern"), path_);
      PreStep st(PreStep::kSplit);
      if (is_re) {
        st.re = std::make_shared<Regex>(pat, path_);
      } else {
        st.literal = pat;
      }
      st.behavior = parse_behavior(get_str(j, "behavior", "Isolated"), path_);
      st.invert = get_bool(j, "invert", false);
      t_.pre.push_back(std::move(st));
    } else if (type == "Metaspace") {
      PreStep st(PreStep::kMetaspace);
      st.replacement = get_str(j, "replacement", kMetaspace);
      const std::string scheme = get_str(j, "prepend_scheme", get_bool(j, "add_prefix_space", true) ? "always" : "never");
      st.prepend = scheme == "first" ? PreStep::kFirst : scheme == "never" ? PreStep::kNever : PreStep::kAlways;
      st.split = get_bool(j, "split", true);
      t_.pre.push_back(std::move(st));
    } else if (type == "Digits") {
      add_regex_split(R"(\p{N})", get_bool(j, "individual_digits", false) ? SplitBehavior::kIsolated
                                                                         : SplitBehavior::kContiguous, false);
    } else if (type == "WhitespaceSplit") {
      add_regex_split(R"(\s+)", SplitBehavior::kRemoved, false);
    } else if (type == "Whitespace") {
      add_regex_split(R"(\w+|[^\w\s]+)", SplitBehavior::kRemoved, true);
    } else if (type == "Punctuation") {
      add_regex_split(R"([\p{P}!-/:-@\[-`{-~])", parse_behavior(get_str(j, "behavior", "Isolated"), path_), false);
    } else {
      fail("{}: unsupported pre_tokenizer type '{}'", path_, type);
    }
  }

  int32_t id_of(const std::string& token) const {
    auto it = t_.token_to_id.find(token);
    if (it == t_.token_to_id.end()) fail("{}: post_processor names unknown token '{}'", path_, token);
    return it->second;
  }

  void parse_post(const json& j) {
    if (j.is_null()) return;
    const std::string type = get_str(j, "type");
    if (type == "Sequence") {
      for (const json& p : j.at("processors")) parse_post(p);
    } else if (type == "TemplateProcessing") {
      const json& specials = j.contains("special_tokens") ? j.at("special_tokens") : json::object();
      bool seen_seq = false;
      for (const json& item : j.at("single")) {
        if (item.contains("Sequence")) {
          seen_seq = true;
        } else if (item.contains("SpecialToken")) {
          const std::string name = item.at("SpecialToken").at("id").get<std::string>();
          std::vector<int32_t> ids;
          if (specials.contains(name)) {
            ids = specials.at(name).at("ids").get<std::vector<int32_t>>();
          } else {
            ids.push_back(id_of(name));
          }
          auto& dst = seen_seq ? t_.suffix : t_.prefix;
          dst.insert(dst.end(), ids.begin(), ids.end());
        }
      }
    } else if (type == "RobertaProcessing" || type == "BertProcessing") {
      t_.prefix.push_back(j.at("cls").at(1).get<int32_t>());
      t_.suffix.push_back(j.at("sep").at(1).get<int32_t>());
    } else if (type != "ByteLevel") {
      spdlog::warn("{}: post_processor '{}' is not supported and is ignored", path_, type);
    }
  }

  void parse_decoder(const json& j) {
    if (j.is_null()) return;
    const std::string type = get_str(j, "type");
    if (type == "Sequence") {
      for (const json& d : j.at("decoders")) parse_decoder(d);
    } else if (type == "ByteLevel") {
      t_.decode_bytelevel = true;
    } else if (type == "Replace") {
      auto [pat, is_re] = parse_pattern(j.at("pattern"), path_);
      if (is_re) fail("{}: Replace decoder with a regex pattern is not supported", path_);
      t_.decode_replace.emplace_back(pat, j.at("content").get<std::string>());
    } else if (type == "ByteFallback") {
      t_.decode_byte_fallback = true;
    } else if (type == "Fuse") {
      // Tokens are always joined here.
    } else if (type == "Strip") {
      // Only the SentencePiece form (strip leading spaces after Fuse) matters here.
      if (get_str(j, "content", " ") == " ") t_.strip_leading_spaces = j.value("start", 0);
    } else if (type == "Metaspace") {
      t_.decode_replace.emplace_back(get_str(j, "replacement", kMetaspace), " ");
      const std::string scheme = get_str(j, "prepend_scheme", get_bool(j, "add_prefix_space", true) ? "always" : "never");
      if (scheme != "never") t_.strip_leading_spaces = 1;
    } else {
      spdlog::warn("{}: decoder '{}' is not supported; tokens decode to their raw text", path_, type);
    }
  }

  // The GGUF tokenizer.ggml.pre name matching this pipeline, "" when none does.
  std::string detect_gguf_pre() const {
    const auto& p = t_.pre;
    if (!t_.normalizers.empty()) return "";
    if (p.size() == 1 && p[0].kind == PreStep::kByteLevel && p[0].use_regex && !p[0].add_prefix_space)
      return "gpt-2";
    if (p.size() == 2 && p[0].kind == PreStep::kSplit && p[0].re && !p[0].invert &&
        p[0].behavior == SplitBehavior::kIsolated && p[1].kind == PreStep::kByteLevel && !p[1].use_regex &&
        !p[1].add_prefix_space) {
      if (p[0].re->pattern() == kLlama3Pattern) return "llama-bpe";
      if (p[0].re->pattern() == kQwen2Pattern) return "qwen2";
    }
    return "";
  }

  TokenizerImpl& t_;
  std::string path_;
};

void read_side_configs(TokenizerImpl& t, const std::filesystem::path& dir) {
  const auto cfg_path = dir / "tokenizer_config.json";
  std::string bos_name, eos_name, pad_name;
  int add_bos = -1, add_eos = -1;  // -1: not stated
  if (std::filesystem::exists(cfg_path)) {
    const std::string p = cfg_path.string();
    const json cfg = parse_json(p);
    try {
      if (!cfg.is_object()) fail("{}: top level is not a JSON object", p);
      if (auto it = cfg.find("chat_template"); it != cfg.end()) {
        if (it->is_string()) {
          t.chat_template = it->get<std::string>();
        } else if (it->is_array()) {
          // Named templates: prefer "default", else the first one.
          for (const json& e : *it) {
            if (t.chat_template.empty() || get_str(e, "name") == "default") t.chat_template = get_str(e, "template");
            if (get_str(e, "name") == "default") break;
          }
        }
      }
      bos_name = token_name(cfg, "bos_token");
      eos_name = token_name(cfg, "eos_token");
      pad_name = token_name(cfg, "pad_token");
      if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) add_bos = cfg["add_bos_token"].get<bool>();
      if (cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean()) add_eos = cfg["add_eos_token"].get<bool>();
    } catch (const json::exception& e) {
      fail("{}: {}", p, e.what());
    }
  }
  if (t.chat_template.empty()) {
    const auto jinja = dir / "chat_template.jinja";  // newer transformers store it separately
    if (std::filesystem::exists(jinja)) t.chat_template = read_text(jinja.string());
  }
  auto lookup = [&](const std::string& name) -> int32_t {
    auto it = t.token_to_id.find(name);
    return it == t.token_to_id.end() ? -1 : it->second;
  };
  if (!bos_name.empty()) {
    t.bos = lookup(bos_name);
    if (t.bos < 0) spdlog::warn("{}: bos_token '{}' is not in the vocab", cfg_path.string(), bos_name);
  } else if (!t.prefix.empty()) {
    t.bos = t.prefix.front();
  }
  if (t.bos >= 0) t.bos_token = t.id_to_token[t.bos];
  if (add_bos == 0 && t.bos >= 0) {
    std::erase(t.prefix, t.bos);
  } else if (add_bos == 1 && t.bos >= 0 && (t.prefix.empty() || t.prefix.front() != t.bos)) {
    t.prefix.insert(t.prefix.begin(), t.bos);
  }

  if (!pad_name.empty()) t.pad = lookup(pad_name);
  if (!eos_name.empty()) {
    const int32_t id = lookup(eos_name);
    if (id >= 0) t.eos.push_back(id);
    else spdlog::warn("{}: eos_token '{}' is not in the vocab", cfg_path.string(), eos_name);
  }
  const auto gen_path = dir / "generation_config.json";
  if (std::filesystem::exists(gen_path)) {
    const json gen = parse_json(gen_path.string());
    if (gen.is_object() && gen.contains("eos_token_id")) {
      const json& e = gen["eos_token_id"];
      std::vector<int64_t> ids;
      if (e.is_number_integer()) ids.push_back(e.get<int64_t>());
      if (e.is_array())
        for (const json& x : e)
          if (x.is_number_integer()) ids.push_back(x.get<int64_t>());
      for (int64_t id : ids)
        if (id >= 0 && id < static_cast<int64_t>(t.id_to_token.size()) &&
            std::find(t.eos.begin(), t.eos.end(), id) == t.eos.end())
          t.eos.push_back(static_cast<int32_t>(id));
    }
  }
  if (t.eos.empty()) {
    for (const char* name : {"</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>"}) {
      const int32_t id = lookup(name);
      if (id >= 0) {
        t.eos.push_back(id);
        break;
      }
    }
  }
  if (!t.eos.empty()) t.eos_token = t.id_to_token[t.eos.front()];
  if (add_eos == 1 && !t.eos.empty() && (t.suffix.empty() || t.suffix.back() != t.eos.front()))
    t.suffix.push_back(t.eos.front());
}

}  // namespace

Tokenizer Tokenizer::from_hf_json_file(const std::string& tokenizer_json_path) {
  const json root = parse_json(tokenizer_json_path);
  Tokenizer tok;
  tok.impl_->origin = tokenizer_json_path;
  try {
    HfLoader(*tok.impl_, tokenizer_json_path).load(root);
  } catch (const json::exception& e) {
    fail("{}: {}", tokenizer_json_path, e.what());
  }
  read_side_configs(*tok.impl_, std::filesystem::path(tokenizer_json_path).parent_path());
  return tok;
}

}  // namespace anybit
