// Tokenizer tests: exact agreement with Hugging Face on the tiny-llama reference
// prompts and on all of val.txt, round trips, streaming decode, GGUF vocabularies
// and malformed inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/unicode_util.h"

namespace anybit {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::string kModelDir = std::string(ANYBIT_SHARED_DIR) + "/models/tiny-llama";
const std::string kFixtures = std::string(ANYBIT_SOURCE_DIR) + "/tests/fixtures/tokenizer";

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<int32_t> read_ids(const std::string& path) {
  const std::string bytes = read_file(path);
  std::vector<int32_t> ids(bytes.size() / 4);
  for (size_t i = 0; i < ids.size(); ++i) {
    const auto* p = reinterpret_cast<const uint8_t*>(bytes.data() + 4 * i);
    ids[i] = static_cast<int32_t>(p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24));
  }
  return ids;
}

const Tokenizer& tiny() {
  static const Tokenizer tok = Tokenizer::from_hf_json_file(kModelDir + "/tokenizer.json");
  return tok;
}

const std::string& val_text() {
  static const std::string text = read_file(std::string(ANYBIT_SHARED_DIR) + "/data/val.txt");
  return text;
}

// Compares id sequences and, on mismatch, shows where and what text is there.
void expect_same_ids(const Tokenizer& tok, const std::vector<int32_t>& got, const std::vector<int32_t>& want) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  if (i == got.size() && i == want.size()) return;
  const size_t from = i >= 8 ? i - 8 : 0;
  auto window = [&](const std::vector<int32_t>& ids) {
    std::string s;
    for (size_t k = from; k < std::min(ids.size(), i + 8); ++k)
      s += std::to_string(ids[k]) + "'" + tok.token_bytes(ids[k], false) + "' ";
    return s;
  };
  ADD_FAILURE() << "first difference at token " << i << " of " << want.size() << " (got " << got.size()
                << ")\n got:  " << window(got) << "\n want: " << window(want);
}

TEST(Tokenizer, ReferencePromptsMatchTransformers) {
  const json ref = json::parse(read_file(kModelDir + "/reference.json"));
  ASSERT_EQ(ref["references"].size(), 5u);
  for (const json& r : ref["references"]) {
    const std::string prompt = r["prompt"];
    EXPECT_EQ(tiny().encode(prompt, true), r["prompt_ids"].get<std::vector<int32_t>>()) << prompt;
    EXPECT_EQ(tiny().decode(r["greedy_ids"].get<std::vector<int32_t>>()), r["greedy_text"].get<std::string>())
        << prompt;
  }
}

TEST(Tokenizer, MetadataFromTokenizerConfig) {
  const Tokenizer& t = tiny();
  EXPECT_EQ(t.vocab_size(), 8192);
  EXPECT_EQ(t.bos_id(), 0);
  EXPECT_EQ(t.bos_token(), "<|begin_of_text|>");
  ASSERT_FALSE(t.eos_ids().empty());
  EXPECT_EQ(t.eos_ids()[0], 1);
  EXPECT_EQ(t.eos_token(), "<|end_of_text|>");
  EXPECT_TRUE(t.is_special(0));
  EXPECT_TRUE(t.is_special(2));
  EXPECT_FALSE(t.is_special(457));
  EXPECT_EQ(t.token_to_id("<|pad|>"), 2);
  EXPECT_EQ(t.token_to_id("no such token"), -1);
  EXPECT_EQ(t.token_bytes(0, true), "");
  EXPECT_EQ(t.token_bytes(0, false), "<|begin_of_text|>");
}

TEST(Tokenizer, SpecialTokensInTextAreRecognised) {
  const Tokenizer& t = tiny();
  const auto ids = t.encode("The kernel<|end_of_text|>The kernel", false);
  const std::vector<int32_t> want = {457, 600, 1, 457, 600};
  EXPECT_EQ(ids, want);
  EXPECT_EQ(t.decode(ids, true), "The kernelThe kernel");
  EXPECT_EQ(t.decode(ids, false), "The kernel<|end_of_text|>The kernel");
  // add_special only adds BOS (the template has no suffix).
  EXPECT_EQ(t.encode("", true), std::vector<int32_t>{0});
  EXPECT_TRUE(t.encode("", false).empty());
}

TEST(Tokenizer, ValRoundTripAndSpeed) {
  const std::string& text = val_text();
  ASSERT_GT(text.size(), 100000u);
  // Fresh tokenizers so the word cache starts empty: this times the cold path
  // (best of two, as other jobs share this machine's cores).
  double cold = 1e9;
  std::vector<int32_t> ids;
  for (int rep = 0; rep < 2; ++rep) {
    const Tokenizer fresh = Tokenizer::from_hf_json_file(kModelDir + "/tokenizer.json");
    const auto t0 = std::chrono::steady_clock::now();
    ids = fresh.encode(text, false);
    cold = std::min(cold, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const Tokenizer& tok = tiny();
  (void)tok.encode(text, false);
  const auto t1 = std::chrono::steady_clock::now();
  const auto ids2 = tok.encode(text, false);
  const double warm = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  EXPECT_EQ(ids, ids2);
  const auto t2 = std::chrono::steady_clock::now();
  const std::string back = tok.decode(ids);
  const double dec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t2).count();
  EXPECT_EQ(back, text);
  std::printf("val.txt: %zu bytes -> %zu tokens; encode %.1f ms cold (%.1f MB/s), %.1f ms warm; decode %.1f ms\n",
              text.size(), ids.size(), cold * 1e3, text.size() / cold / 1e6, warm * 1e3, dec * 1e3);
  EXPECT_LT(cold, 1.0);
}

// Reference ids produced by Hugging Face tokenizers on a machine that has it.
TEST(Tokenizer, ValMatchesHuggingFaceByteLevel) {
  const std::string ref = kFixtures + "/val_ids_bytelevel.bin";
  if (!fs::exists(ref)) GTEST_SKIP() << ref << " not generated yet";
  const auto want = read_ids(ref);
  expect_same_ids(tiny(), tiny().encode(val_text(), false), want);
}

void check_split_variant(const std::string& dir, const std::string& ids_name) {
  const std::string tj = kFixtures + "/" + dir + "/tokenizer.json";
  const std::string ref = kFixtures + "/" + ids_name;
  if (!fs::exists(tj) || !fs::exists(ref)) GTEST_SKIP() << dir << " fixtures not generated yet";
  const Tokenizer tok = Tokenizer::from_hf_json_file(tj);
  const auto got = tok.encode(val_text(), false);
  expect_same_ids(tok, got, read_ids(ref));
  EXPECT_EQ(tok.decode(got), val_text());
}

TEST(Tokenizer, ValMatchesHuggingFaceLlama3Split) { check_split_variant("llama3-split", "val_ids_llama3split.bin"); }
TEST(Tokenizer, ValMatchesHuggingFaceQwen2Split) { check_split_variant("qwen2-split", "val_ids_qwen2split.bin"); }

// 38 tricky strings per tokenizer (whitespace runs, CRLF, digits, contractions,
// emoji, CJK, combining marks, NBSP, special tokens inside text).
TEST(Tokenizer, SpecialCasesMatchHuggingFace) {
  const std::string path = kFixtures + "/special_cases.json";
  if (!fs::exists(path)) GTEST_SKIP() << path << " not generated yet";
  const json cases = json::parse(read_file(path));
  const std::map<std::string, std::string> files = {
      {"bytelevel", kModelDir + "/tokenizer.json"},
      {"llama3-split", kFixtures + "/llama3-split/tokenizer.json"},
      {"qwen2-split", kFixtures + "/qwen2-split/tokenizer.json"}};
  size_t checked = 0;
  for (const auto& [name, file] : files) {
    const Tokenizer tok = Tokenizer::from_hf_json_file(file);
    for (const json& c : cases.at("cases").at(name)) {
      const std::string text = c.at("text");
      const auto want = c.at("ids").get<std::vector<int32_t>>();
      const auto got = tok.encode(text, true);
      EXPECT_EQ(got, want) << name << ": " << json(text).dump();
      EXPECT_EQ(tok.decode(want, false), c.at("decoded").get<std::string>()) << name << ": " << json(text).dump();
      ++checked;
    }
  }
  EXPECT_GE(checked, 3 * 38u);
}

// The tiny random models' tokenizers (Llama-3 / Qwen2 style and a copy of tiny-llama's).
TEST(Tokenizer, FixtureModelPromptsMatchTransformers) {
  for (const char* model : {"llama3-tiny", "qwen2-tiny", "mistral-tiny"}) {
    const std::string dir = std::string(ANYBIT_SOURCE_DIR) + "/tests/fixtures/" + model;
    if (!fs::exists(dir + "/reference.json")) continue;
    const Tokenizer tok = Tokenizer::from_hf_json_file(dir + "/tokenizer.json");
    const json ref = json::parse(read_file(dir + "/reference.json"));
    for (const json& r : ref["references"]) {
      const std::string prompt = r["prompt"];
      EXPECT_EQ(tok.encode(prompt, true), r["prompt_ids"].get<std::vector<int32_t>>()) << model << ": " << prompt;
      EXPECT_EQ(tok.decode(r["greedy_ids"].get<std::vector<int32_t>>()), r["greedy_text"].get<std::string>())
          << model << ": " << prompt;
    }
  }
}

// Random strings drawn from ranges that stress the regexes and the byte map.
std::string random_utf8(std::mt19937& rng, size_t n_chars) {
  static const std::vector<std::pair<uint32_t, uint32_t>> ranges = {
      {0x20, 0x7E}, {0x20, 0x7E}, {0x20, 0x7E}, {'\n', '\n'}, {'\t', '\t'}, {'\r', '\r'}, {0xA0, 0xFF},
      {0x300, 0x36F}, {0x400, 0x4FF}, {0x4E00, 0x9FFF}, {0x3000, 0x3000}, {0x2000, 0x200B},
      {0x1F300, 0x1F64F}, {0x1F900, 0x1F9FF}, {0x10000, 0x1000F}, {0xE000, 0xE00F}, {0x30, 0x39}};
  std::string s;
  for (size_t i = 0; i < n_chars; ++i) {
    const auto& [lo, hi] = ranges[rng() % ranges.size()];
    utf8::append(s, lo + rng() % (hi - lo + 1));
  }
  return s;
}

TEST(Tokenizer, RandomUtf8RoundTrip) {
  std::mt19937 rng(std::random_device{}());
  for (int iter = 0; iter < 300; ++iter) {
    const std::string s = random_utf8(rng, 1 + rng() % 60);
    ASSERT_TRUE(utf8::is_valid(s));
    const auto ids = tiny().encode(s, false);
    ASSERT_EQ(tiny().decode(ids), s);
    for (int32_t id : ids) ASSERT_TRUE(id >= 3 && id < tiny().vocab_size());
  }
}

TEST(Tokenizer, InvalidUtf8InputDoesNotCrash) {
  const std::string bad = std::string("ab\xC3 \xE2\x82 \xFF\xFE cd \xF0\x9F\x98", 17);
  const auto ids = tiny().encode(bad, false);
  // Every byte still reaches a byte-level token, so the raw bytes survive.
  std::string raw;
  for (int32_t id : ids) raw += tiny().token_bytes(id);
  EXPECT_EQ(raw, bad);
  EXPECT_TRUE(utf8::is_valid(tiny().decode(ids)));
}

// One token per byte, so multi-byte characters are split across tokens.
std::vector<int32_t> byte_tokens(const Tokenizer& tok, std::string_view s) {
  std::vector<int32_t> ids;
  for (char c : s) {
    std::string ch;
    utf8::append(ch, utf8::byte_to_cp(static_cast<uint8_t>(c)));
    ids.push_back(tok.token_to_id(ch));
    EXPECT_GE(ids.back(), 0);
  }
  return ids;
}

TEST(StreamDecoder, HoldsIncompleteCharacters) {
  const std::string text = "h\xC3\xA9llo \xF0\x9F\x8C\x8D \xE4\xB8\x96\xE7\x95\x8C!";  // héllo 🌍 世界!
  const auto ids = byte_tokens(tiny(), text);
  StreamDecoder sd(tiny());
  std::string all;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string out = sd.push(ids[i]);
    EXPECT_TRUE(utf8::is_valid(out)) << "chunk " << i;
    all += out;
    // After the lead byte of the emoji (index 7) nothing of it may be emitted.
    if (i == 7 || i == 8 || i == 9) {
      EXPECT_EQ(out, "");
    }
  }
  all += sd.flush();
  EXPECT_EQ(all, text);

  // Real tokens from encode, pushed one at a time, give the decoded text.
  StreamDecoder sd2(tiny());
  std::string all2;
  for (int32_t id : tiny().encode(text, false)) all2 += sd2.push(id);
  all2 += sd2.flush();
  EXPECT_EQ(all2, text);
}

TEST(StreamDecoder, InvalidBytesBecomeReplacementCharacters) {
  StreamDecoder sd(tiny());
  // A stray continuation byte can never complete: replaced at once.
  EXPECT_EQ(sd.push(byte_tokens(tiny(), "\x80")[0]), "\xEF\xBF\xBD");
  // Two bytes of a four-byte character are held, then flushed as one U+FFFD.
  for (int32_t id : byte_tokens(tiny(), "a\xF0\x9F")) (void)sd.push(id);
  EXPECT_EQ(sd.flush(), "\xEF\xBF\xBD");
  // A lead byte followed by an ASCII byte: the lead is invalid, the ASCII survives.
  std::string out;
  for (int32_t id : byte_tokens(tiny(), "\xE4Z")) out += sd.push(id);
  out += sd.flush();
  EXPECT_EQ(out, "\xEF\xBF\xBDZ");
  EXPECT_EQ(sd.flush(), "");
}

// --- GGUF vocabularies ------------------------------------------------------------

TEST(GgufVocab, HfExportRoundTripEncodesValIdentically) {
  const GgufVocab v = tiny().to_gguf_vocab();
  EXPECT_EQ(v.model, "gpt2");
  EXPECT_EQ(v.pre, "gpt-2");
  EXPECT_EQ(v.tokens.size(), 8192u);
  EXPECT_EQ(v.merges.size(), 7933u);
  EXPECT_EQ(v.merges[0], "\xC4\xA0 \xC4\xA0");  // "Ġ Ġ"
  EXPECT_EQ(v.token_types[0], 3);
  EXPECT_EQ(v.token_types[457], 1);
  EXPECT_EQ(v.bos_id, 0);
  EXPECT_EQ(v.eos_id, 1);
  EXPECT_TRUE(v.add_bos);
  EXPECT_FALSE(v.add_eos);

  const Tokenizer g = Tokenizer::from_gguf_vocab(v, "roundtrip.gguf");
  EXPECT_EQ(g.vocab_size(), tiny().vocab_size());
  EXPECT_EQ(g.bos_id(), 0);
  EXPECT_EQ(g.eos_ids().at(0), 1);
  expect_same_ids(g, g.encode(val_text(), false), tiny().encode(val_text(), false));
  EXPECT_EQ(g.encode("The kernel", true), (std::vector<int32_t>{0, 457, 600}));
  EXPECT_EQ(g.decode(g.encode(val_text(), false)), val_text());
  // Exporting the GGUF-born tokenizer again gives the same vocabulary.
  const GgufVocab v2 = g.to_gguf_vocab();
  EXPECT_EQ(v2.tokens, v.tokens);
  EXPECT_EQ(v2.merges, v.merges);
  EXPECT_EQ(v2.pre, "gpt-2");
}

TEST(GgufVocab, PreTokenizerNamesSelectTheRegex) {
  GgufVocab v = tiny().to_gguf_vocab();
  const std::string digits = "x 1234567";
  auto pieces = [&](const Tokenizer& t) {
    std::vector<std::string> out;
    for (int32_t id : t.encode(digits, false)) out.push_back(t.token_bytes(id));
    return out;
  };
  v.pre = "qwen2";  // every digit on its own
  for (const std::string& p : pieces(Tokenizer::from_gguf_vocab(v, "q.gguf")))
    if (p.find_first_of("0123456789") != std::string::npos) {
      EXPECT_EQ(p.size(), 1u) << p;
    }
  v.pre = "llama-bpe";  // digits in groups of at most three, never across a group
  std::string joined;
  std::vector<size_t> cuts;
  for (const std::string& p : pieces(Tokenizer::from_gguf_vocab(v, "l.gguf"))) {
    joined += p;
    cuts.push_back(joined.size());
  }
  EXPECT_EQ(joined, digits);
  EXPECT_NE(std::find(cuts.begin(), cuts.end(), 5u), cuts.end());  // "x 123" | "456" | "7"
  EXPECT_NE(std::find(cuts.begin(), cuts.end(), 8u), cuts.end());
  v.pre = "some-new-model";  // unknown: GPT-2 regex with a warning
  EXPECT_EQ(Tokenizer::from_gguf_vocab(v, "u.gguf").encode(val_text().substr(0, 5000), false),
            tiny().encode(val_text().substr(0, 5000), false));
}

// A small SentencePiece vocabulary where the score order, not the pair order,
// decides the merges.
GgufVocab spm_vocab(bool with_bytes) {
  GgufVocab v;
  v.model = "llama";
  auto add = [&](const std::string& t, float score, int32_t type) {
    v.tokens.push_back(t);
    v.scores.push_back(score);
    v.token_types.push_back(type);
  };
  add("<unk>", 0, 2);
  add("<s>", 0, 3);
  add("</s>", 0, 3);
  if (with_bytes)
    for (int b = 0; b < 256; ++b) add(fmt::format("<0x{:02X}>", b), 0, 6);
  const std::string sp = kMetaspace;
  for (const char* c : {"h", "e", "l", "o", "w", "r", "d"}) add(c, -10, 1);
  add(sp, -10, 1);
  add("he", -0.5f, 1);
  add("ll", -1, 1);
  add(sp + "h", -2, 1);
  add(sp + "he", -3, 1);
  add("llo", -4, 1);
  add(sp + "hello", -5, 1);
  add(sp + "w", -2, 1);
  add("or", -1, 1);
  add("ld", -1.5f, 1);
  add(sp + "wor", -3, 1);
  v.bos_id = 1;
  v.eos_id = 2;
  v.unk_id = 0;
  v.add_bos = true;
  return v;
}

TEST(GgufVocab, SentencePieceMergesByScore) {
  const GgufVocab v = spm_vocab(true);
  const Tokenizer t = Tokenizer::from_gguf_vocab(v, "spm.gguf");
  auto id = [&](const std::string& s) { return t.token_to_id(s); };
  const std::string sp = kMetaspace;
  EXPECT_EQ(t.encode("hello world", true), (std::vector<int32_t>{1, id(sp + "hello"), id(sp + "wor"), id("ld")}));
  // Equal scores: the leftmost pair merges first.
  EXPECT_EQ(t.encode("lll", false), (std::vector<int32_t>{id(sp), id("ll"), id("l")}));
  // é is not in the vocabulary: UTF-8 bytes through <0xNN>.
  EXPECT_EQ(t.encode("h\xC3\xA9", false), (std::vector<int32_t>{id(sp + "h"), 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(t.decode(t.encode("h\xC3\xA9", false)), "h\xC3\xA9");
  // Control tokens written in the text are recognised; a space prefix follows them.
  EXPECT_EQ(t.encode("hello</s>hello", false), (std::vector<int32_t>{id(sp + "hello"), 2, id(sp + "hello")}));
  const auto ids = t.encode("hello world", true);
  EXPECT_EQ(t.decode(ids), "hello world");
  EXPECT_EQ(t.decode(ids, false), "<s> hello world");
  EXPECT_TRUE(t.is_special(1));
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_ids(), std::vector<int32_t>{2});
  EXPECT_EQ(t.token_bytes(3 + 0x41), "A");
  EXPECT_EQ(t.token_bytes(id(sp + "hello")), " hello");

  // add_space_prefix = false: no ▁ before the first word, and none stripped on decode.
  GgufVocab nv = spm_vocab(true);
  nv.add_space_prefix = false;
  const Tokenizer t3 = Tokenizer::from_gguf_vocab(nv, "spm3.gguf");
  EXPECT_EQ(t3.encode("he world", false), (std::vector<int32_t>{id("he"), id(sp + "wor"), id("ld")}));
  EXPECT_EQ(t3.decode(t3.encode(" he", false)), " he");

  // Without byte tokens an unknown character maps to <unk>.
  const Tokenizer t2 = Tokenizer::from_gguf_vocab(spm_vocab(false), "spm2.gguf");
  EXPECT_EQ(t2.encode("h\xC3\xA9", false), (std::vector<int32_t>{t2.token_to_id(sp + "h"), 0}));
}

TEST(GgufVocab, MalformedVocabularies) {
  GgufVocab v = spm_vocab(true);
  v.model = "bert";
  EXPECT_THROW(Tokenizer::from_gguf_vocab(v, "x.gguf"), Error);
  v = spm_vocab(true);
  v.token_types.pop_back();
  EXPECT_THROW(Tokenizer::from_gguf_vocab(v, "x.gguf"), Error);
  v = tiny().to_gguf_vocab();
  v.merges.push_back("nosuchtoken x");
  try {
    Tokenizer::from_gguf_vocab(v, "bad-merges.gguf");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad-merges.gguf"), std::string::npos);
  }
  EXPECT_THROW(Tokenizer::from_gguf_vocab(GgufVocab{}, "empty.gguf"), Error);
}

TEST(Tokenizer, SplitBehaviors) {
  const std::string text = "a,b,,c";
  const std::vector<std::pair<size_t, size_t>> commas = {{1, 2}, {3, 4}, {4, 5}};
  auto run = [&](SplitBehavior b, bool invert) {
    std::vector<std::string> out;
    split_pieces(text, commas, b, invert, out);
    return out;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(run(SplitBehavior::kRemoved, false), (V{"a", "b", "c"}));
  EXPECT_EQ(run(SplitBehavior::kIsolated, false), (V{"a", ",", "b", ",", ",", "c"}));
  EXPECT_EQ(run(SplitBehavior::kMergedWithPrevious, false), (V{"a,", "b,", ",", "c"}));
  EXPECT_EQ(run(SplitBehavior::kMergedWithNext, false), (V{"a", ",b", ",", ",c"}));
  EXPECT_EQ(run(SplitBehavior::kContiguous, false), (V{"a", ",", "b", ",,", "c"}));
  EXPECT_EQ(run(SplitBehavior::kRemoved, true), (V{",", ",", ","}));
}

}  // namespace
}  // namespace anybit
