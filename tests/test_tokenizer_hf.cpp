// tokenizer.json variants: a SentencePiece-converted (Llama-2 style) BPE with byte
// fallback, Metaspace pre-tokenizers, added-token flags, and malformed files.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace anybit {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::string kLlama2Dir = std::string(ANYBIT_SOURCE_DIR) + "/tests/fixtures/tokenizer_unit/llama2-style";
const std::string kTinyJson = std::string(ANYBIT_SHARED_DIR) + "/models/tiny-llama/tokenizer.json";
const std::string kSp = "\xE2\x96\x81";  // U+2581

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A fresh directory per test so side files (tokenizer_config.json) do not leak.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("anybit_tok_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string write(const std::string& name, const std::string& content) const {
    const std::string p = (path_ / name).string();
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }

 private:
  fs::path path_;
};

TEST(TokenizerHf, SentencePieceStyleBpeWithByteFallback) {
  const Tokenizer t = Tokenizer::from_hf_json_file(kLlama2Dir + "/tokenizer.json");
  auto id = [&](const std::string& s) {
    const int32_t i = t.token_to_id(s);
    EXPECT_GE(i, 0) << s;
    return i;
  };
  // Prepend("▁") + Replace(" ", "▁"), then merges by rank over the whole segment.
  EXPECT_EQ(t.encode("hello world", true), (std::vector<int32_t>{1, id(kSp + "hello"), id(kSp + "wor"), id("ld")}));
  // é is not in the vocabulary: its UTF-8 bytes become <0xC3> <0xA9>.
  EXPECT_EQ(t.encode("h\xC3\xA9", false), (std::vector<int32_t>{id(kSp + "h"), id("<0xC3>"), id("<0xA9>")}));
  // Decoder Replace(▁→space), ByteFallback, Fuse, Strip(1 leading space).
  EXPECT_EQ(t.decode(t.encode("hello world", true)), "hello world");
  EXPECT_EQ(t.decode(t.encode("h\xC3\xA9 world", true)), "h\xC3\xA9 world");
  EXPECT_EQ(t.token_bytes(id("<0x41>")), "A");
  // The normalizer runs per segment between added tokens (HF's legacy behaviour).
  EXPECT_EQ(t.encode("<s>hello", false), (std::vector<int32_t>{1, id(kSp + "hello")}));
  // tokenizer_config.json: a named template list picks "default"; bos/eos names.
  EXPECT_EQ(t.chat_template().rfind("{{ bos_token }}", 0), 0u);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.bos_token(), "<s>");
  EXPECT_EQ(t.eos_ids(), std::vector<int32_t>{2});
  EXPECT_EQ(t.eos_token(), "</s>");
  // No GGUF byte-level export for a SentencePiece-style vocabulary.
  EXPECT_THROW(t.to_gguf_vocab(), Error);
}

json llama2_json() { return json::parse(read_file(kLlama2Dir + "/tokenizer.json")); }

TEST(TokenizerHf, UnknownCharactersFuseIntoOneUnk) {
  json j = llama2_json();
  j["model"]["byte_fallback"] = false;
  TempDir dir;
  const Tokenizer t = Tokenizer::from_hf_json_file(dir.write("tokenizer.json", j.dump()));
  // é and € are both unknown and adjacent: fuse_unk makes them one <unk>.
  EXPECT_EQ(t.encode("h\xC3\xA9\xE2\x82\xAC", false), (std::vector<int32_t>{t.token_to_id(kSp + "h"), 0}));
  j["model"]["fuse_unk"] = false;
  const Tokenizer t2 = Tokenizer::from_hf_json_file(dir.write("tokenizer.json", j.dump()));
  EXPECT_EQ(t2.encode("h\xC3\xA9\xE2\x82\xAC", false), (std::vector<int32_t>{t2.token_to_id(kSp + "h"), 0, 0}));
  // No tokenizer_config.json here: BOS comes from the post-processor.
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_TRUE(t.chat_template().empty());
}

TEST(TokenizerHf, MetaspacePreTokenizer) {
  json j = llama2_json();
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", kSp}, {"prepend_scheme", "first"}, {"split", false}};
  j["decoder"] = {{"type", "Metaspace"}, {"replacement", kSp}, {"prepend_scheme", "first"}, {"split", false}};
  TempDir dir;
  const Tokenizer t = Tokenizer::from_hf_json_file(dir.write("tokenizer.json", j.dump()));
  const std::vector<int32_t> hello_world = {t.token_to_id(kSp + "hello"), t.token_to_id(kSp + "wor"),
                                            t.token_to_id("ld")};
  EXPECT_EQ(t.encode("hello world", false), hello_world);
  EXPECT_EQ(t.decode(hello_world), "hello world");
  // prepend_scheme "first": text after an added token gets no ▁.
  EXPECT_EQ(t.encode("<s>hello", false),
            (std::vector<int32_t>{1, t.token_to_id("h"), t.token_to_id("e"), t.token_to_id("llo")}));

  j["pre_tokenizer"]["prepend_scheme"] = "always";
  j["pre_tokenizer"]["split"] = true;
  const Tokenizer t2 = Tokenizer::from_hf_json_file(dir.write("tokenizer.json", j.dump()));
  EXPECT_EQ(t2.encode("hello world", false), hello_world);
  EXPECT_EQ(t2.encode("<s>hello", false), (std::vector<int32_t>{1, t2.token_to_id(kSp + "hello")}));
}

TEST(TokenizerHf, AddedTokenFlags) {
  json j = json::parse(read_file(kTinyJson));
  auto add = [&](int id, const std::string& content, bool lstrip, bool rstrip, bool single_word) {
    j["added_tokens"].push_back({{"id", id}, {"content", content}, {"single_word", single_word}, {"lstrip", lstrip},
                                 {"rstrip", rstrip}, {"normalized", false}, {"special", false}});
  };
  add(8192, "<tool>", true, true, false);
  add(8193, "foo", false, false, true);
  add(8194, "<to", false, false, false);
  TempDir dir;
  const Tokenizer t = Tokenizer::from_hf_json_file(dir.write("tokenizer.json", j.dump()));
  const Tokenizer& base = t;
  auto cat = [](std::vector<int32_t> a, const std::vector<int32_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  EXPECT_EQ(t.vocab_size(), 8195);
  // lstrip/rstrip swallow the spaces around the token.
  EXPECT_EQ(t.encode("a  <tool> b", false), cat(cat(base.encode("a", false), {8192}), base.encode("b", false)));
  // Longest match wins; the shorter token still matches on its own.
  EXPECT_EQ(t.encode("x<toy", false), cat(cat(base.encode("x", false), {8194}), base.encode("y", false)));
  // single_word: only matched when not inside a word.
  EXPECT_EQ(t.encode("foo bar", false), cat({8193}, base.encode(" bar", false)));
  EXPECT_EQ(t.encode("foobar", false)[0] == 8193, false);
  // Non-special added tokens survive decode(skip_special).
  EXPECT_EQ(t.decode({8192}), "<tool>");
  EXPECT_FALSE(t.is_special(8192));
  const GgufVocab v = t.to_gguf_vocab();
  EXPECT_EQ(v.token_types[8192], 4);
  EXPECT_EQ(v.token_types[1], 3);
}

// Every malformed input must give one anybit::Error line naming the file.
void expect_file_error(const std::string& path, const std::string& must_contain = "") {
  try {
    (void)Tokenizer::from_hf_json_file(path);
    ADD_FAILURE() << "no error for " << path;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    if (!must_contain.empty()) {
      EXPECT_NE(msg.find(must_contain), std::string::npos) << msg;
    }
  }
}

TEST(TokenizerHf, MalformedFiles) {
  TempDir dir;
  const std::string full = read_file(kTinyJson);
  expect_file_error(dir.write("a.json", full.substr(0, full.size() / 2)), "invalid JSON");
  expect_file_error(dir.write("b.json", ""), "invalid JSON");
  expect_file_error(dir.write("c.json", "[1, 2, 3]"));
  expect_file_error(dir.write("d.json", R"({"version": "1.0", "added_tokens": []})"), "model");
  expect_file_error(dir.write("e.json", R"({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}})"), "Unigram");
  expect_file_error(dir.write("f.json", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2},
      "merges": ["a c"]}})"), "absent");
  expect_file_error(dir.write("g.json", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1},
      "merges": [["a", "b"]]}})"), "absent");
  expect_file_error(dir.write("h.json", R"({"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}})"));
  expect_file_error(dir.write("i.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["ab"]}})"));
  expect_file_error(dir.write("j.json", R"({"model": {"type": "BPE", "vocab": {"a": -5}, "merges": []}})"));
  expect_file_error(dir.write("k.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
      "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(?i:'s|[a-"}, "behavior": "Isolated"}})"), "regex");
  expect_file_error(dir.write("l.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
      "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Sideways"}})"), "Sideways");
  expect_file_error(dir.write("m.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
      "pre_tokenizer": {"type": "BertPreTokenizer"}})"), "BertPreTokenizer");
  expect_file_error(dir.write("n.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
      "added_tokens": [{"id": 1}]})"));
  expect_file_error(dir.write("o.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
      "normalizer": {"type": "Precompiled"}})"), "Precompiled");
  expect_file_error((fs::temp_directory_path() / "anybit_no_such_dir/tokenizer.json").string(), "cannot open");
}

TEST(TokenizerHf, MalformedTokenizerConfigIsNamed) {
  TempDir dir;
  dir.write("tokenizer.json", read_file(kTinyJson));
  const std::string cfg = dir.write("tokenizer_config.json", "{\"bos_token\": ");
  try {
    (void)Tokenizer::from_hf_json_file(fs::path(cfg).parent_path().string() + "/tokenizer.json");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(cfg), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace anybit
