// The anybit binary end to end, as a user runs it.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/mapped_file.h"
#include "test_util.h"

using namespace anybit;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {
const std::string kModel = std::string(ANYBIT_SOURCE_DIR) + "/models/tiny-llama";
json reference() { return json::parse(read_text_file(std::string(ANYBIT_SHARED_DIR) + "/models/tiny-llama/reference.json")); }

std::string last_line(const std::string& s) {
  std::string t = s;
  while (!t.empty() && t.back() == '\n') t.pop_back();
  const size_t nl = t.rfind('\n');
  return nl == std::string::npos ? t : t.substr(nl + 1);
}
}  // namespace

TEST(Cli, RunPrintsExactlyTheGreedyContinuation) {
  for (const auto& r : reference()["references"]) {
    const std::string prompt = r["prompt"];
    // The default model is the embedded tiny-llama: no -m needed.
    auto res = test::run_cli("run -p '" + prompt + "' -n 48 -t 2");
    ASSERT_EQ(res.exit_code, 0) << res.err;
    EXPECT_EQ(res.out, r["greedy_text"].get<std::string>() + "\n") << prompt;
  }
}

TEST(Cli, StopStringsAndSeededSampling) {
  auto res = test::run_cli("run -m " + kModel + " -p 'The kernel' -n 48 --stop 'aware'");
  ASSERT_EQ(res.exit_code, 0) << res.err;
  EXPECT_EQ(res.out, " is not yet available.\n\nThe kernel is not \n");
  auto a = test::run_cli("run -p 'The kernel' -n 24 --temp 0.9 --top-p 0.9 --top-k 40 --seed 5");
  auto b = test::run_cli("run -p 'The kernel' -n 24 --temp 0.9 --top-p 0.9 --top-k 40 --seed 5");
  auto c = test::run_cli("run -p 'The kernel' -n 24 --temp 0.9 --top-p 0.9 --top-k 40 --seed 6");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
}

TEST(Cli, PerplexityMatchesTheReferenceProtocol) {
  const std::string val = std::string(ANYBIT_SHARED_DIR) + "/data/val.txt";
  auto res = test::run_cli("perplexity -f " + val + " --ctx 512");
  ASSERT_EQ(res.exit_code, 0) << res.err;
  const std::string line = last_line(res.out);
  ASSERT_EQ(line.rfind("ppl = ", 0), 0u) << line;
  const double ppl = std::stod(line.substr(6));
  const double want = reference()["ppl_val"].get<double>();
  EXPECT_LT(std::fabs(ppl - want) / want, 0.002) << "ppl " << ppl << " vs " << want;
  // reference.json's value sits 0.19% below what transformers itself gives for the stated
  // protocol (recomputed in fp32 and bf16, eager and SDPA: tests/fixtures/tiny-llama-ppl.json);
  // against that recomputation the agreement must be at the printed precision.
  const json hf = json::parse(read_text_file(std::string(ANYBIT_SOURCE_DIR) + "/tests/fixtures/tiny-llama-ppl.json"));
  const double hf_ppl = hf["ppl"]["eager-float32"].get<double>();
  EXPECT_LT(std::fabs(ppl - hf_ppl) / hf_ppl, 1e-5) << "ppl " << ppl << " vs transformers " << hf_ppl;
}

TEST(Cli, BenchOnANamedShape) {
  auto res = test::run_cli("bench --shape tiny -p 16 -n 8 -r 2 --dtype bf16");
  ASSERT_EQ(res.exit_code, 0) << res.err;
  EXPECT_NE(res.out.find("| pp16 |"), std::string::npos) << res.out;
  EXPECT_NE(res.out.find("| tg8 |"), std::string::npos) << res.out;
}

// --parallel N decodes N sequences per step; the row counts the tokens of all of them, and a
// KV cache too small for them is not what sizes the run (the engine is sized for N).
TEST(Cli, BenchDecodesParallelSequences) {
  auto res = test::run_cli("bench --shape tiny --bits 4 -p 8 -n 6 -r 1 --parallel 5");
  ASSERT_EQ(res.exit_code, 0) << res.err;
  EXPECT_NE(res.out.find("5 sequences decoding together"), std::string::npos) << res.out;
  const size_t at = res.out.find("| x5 tg6 | ");
  ASSERT_NE(at, std::string::npos) << res.out;
  EXPECT_GT(std::stod(res.out.substr(at + 11)), 0.0) << res.out;
  EXPECT_NE(test::run_cli("bench --shape tiny -n 4 --parallel 0").exit_code, 0);
}

// A random any-bit model runs on the default device (the CUDA model when a GPU is visible).
TEST(Cli, BenchOnARandomQbitsShape) {
  auto res = test::run_cli("bench --shape tiny --bits 3 -p 16 -n 8 -r 2");
  ASSERT_EQ(res.exit_code, 0) << res.err;
  EXPECT_NE(res.out.find("| pp16 |"), std::string::npos) << res.out;
  EXPECT_NE(res.out.find("| tg8 |"), std::string::npos) << res.out;
  EXPECT_NE(res.out.find("qbits: 3 bits, group 128"), std::string::npos) << res.out;
}

// The quantize command end to end: the folder it writes loads and generates, and the group
// mode follows the documented defaults (asymmetric at 2..3 bits unless --sym).
TEST(Cli, QuantizeWritesALoadableFolderWithTheDefaultGroupMode) {
  test::TempDir tmp;
  struct Case {
    std::string args;
    bool want_sym;
  };
  int index = 0;
  for (const Case& c : {Case{"--bits 3", false}, Case{"--bits 3 --sym", true}, Case{"--bits 8", true}}) {
    SCOPED_TRACE(c.args);
    const std::string out = tmp.file("q" + std::to_string(index++));
    auto q = test::run_cli("quantize -o " + out + " --quantizer rtn " + c.args);
    ASSERT_EQ(q.exit_code, 0) << q.err;
    const json cfg = json::parse(read_text_file(out + "/quantization_config.json"));
    ASSERT_TRUE(cfg.contains("matrices"));
    int checked = 0;
    const std::string st = read_text_file(out + "/model.safetensors");
    const uint64_t hlen = *reinterpret_cast<const uint64_t*>(st.data());
    const json header = json::parse(st.substr(8, size_t(hlen)));
    for (const auto& [name, meta] : header["__metadata__"].items()) {
      if (name.rfind("model.layers.", 0) != 0) continue;
      const json m = json::parse(meta.get<std::string>());
      EXPECT_EQ(m["sym"].get<bool>(), c.want_sym) << name;
      ++checked;
    }
    EXPECT_EQ(checked, 8 * 7);  // 8 layers x q, k, v, o, gate, up, down
    auto run = test::run_cli("run -m " + out + " -p 'The kernel' -n 12");
    ASSERT_EQ(run.exit_code, 0) << run.err;
    EXPECT_FALSE(run.out.empty());
  }
}

// `anybit finetune` on a 2-bit folder, and `quantize --finetune`: the held-out calibration
// KL does not rise (the start is kept otherwise), the codes stay as they were, the tuned
// folder loads and generates; bad combinations fail with one line.
TEST(Cli, FinetuneTunesAQuantizedFolderWithoutTouchingItsCodes) {
  test::TempDir tmp;
  const std::string calib = std::string(ANYBIT_SHARED_DIR) + "/data/calib.txt";
  const std::string q = tmp.file("w2"), ft = tmp.file("w2ft"), qft = tmp.file("w2qft");
  auto r = test::run_cli("quantize -o " + q + " --quantizer rtn-clip --bits 2 --group 64");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string small = " --calib " + calib + " --calib-ctx 64 --calib-tokens 2048";
  r = test::run_cli("finetune -q " + q + " -o " + ft + small + " --epochs 2 --lr 1e-2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json cfg = json::parse(read_text_file(ft + "/quantization_config.json"));
  ASSERT_TRUE(cfg.contains("finetune")) << cfg.dump();
  const json& f = cfg["finetune"];
  EXPECT_LE(f["heldout_kl"].get<double>(), f["heldout_kl_start"].get<double>());
  EXPECT_GT(f["heldout_kl_start"].get<double>(), 0.0);
  EXPECT_EQ(f["steps"].get<int>(), 2 * 8);  // 32 windows, 2 held out, 4 per step
  auto header = [](const std::string& dir) {
    const std::string st = read_text_file(dir + "/model.safetensors");
    const uint64_t hlen = *reinterpret_cast<const uint64_t*>(st.data());
    return std::make_pair(json::parse(st.substr(8, size_t(hlen))), st);
  };
  const auto [h0, st0] = header(q);
  const auto [h1, st1] = header(ft);
  const std::string codes = "model.layers.3.mlp.down_proj.weight.qcodes";
  auto slice = [](const json& h, const std::string& st, const std::string& name) {
    const uint64_t hlen = *reinterpret_cast<const uint64_t*>(st.data());
    const size_t b = 8 + size_t(hlen) + h[name]["data_offsets"][0].get<size_t>();
    const size_t e = 8 + size_t(hlen) + h[name]["data_offsets"][1].get<size_t>();
    return st.substr(b, e - b);
  };
  EXPECT_EQ(slice(h0, st0, codes), slice(h1, st1, codes));
  if (f["best_epoch"].get<int>() > 0)
    EXPECT_NE(slice(h0, st0, "model.layers.3.mlp.down_proj.weight.qscales"),
              slice(h1, st1, "model.layers.3.mlp.down_proj.weight.qscales"));
  auto run = test::run_cli("run -m " + ft + " -p 'The kernel' -n 8");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_FALSE(run.out.empty());

  // --kl-reference: 0 against itself; the tuned 2-bit model is closer to the original
  // than nothing (KL > 0, some top-1 agreement), and the reference's perplexity is the
  // original's own.
  const std::string text = tmp.file("text.txt");
  test::write_file(text, read_text_file(std::string(ANYBIT_SHARED_DIR) + "/data/val.txt").substr(0, 6000));
  auto field = [](const std::string& out, const std::string& key) {
    const size_t p = out.find(key + " = ");
    EXPECT_NE(p, std::string::npos) << key << " missing in " << out;
    return p == std::string::npos ? -1.0 : std::stod(out.substr(p + key.size() + 3));
  };
  auto self = test::run_cli("perplexity -f " + text + " --ctx 128 --kl-reference " + kModel);
  ASSERT_EQ(self.exit_code, 0) << self.err;
  EXPECT_NEAR(field(self.out, "kl"), 0.0, 1e-9);
  EXPECT_EQ(field(self.out, "top1_agree"), 1.0);
  EXPECT_EQ(last_line(self.out).rfind("ppl = ", 0), 0u);
  auto kl = test::run_cli("perplexity -m " + ft + " -f " + text + " --ctx 128 --kl-reference " + kModel);
  ASSERT_EQ(kl.exit_code, 0) << kl.err;
  EXPECT_GT(field(kl.out, "kl"), 1e-3);
  EXPECT_GT(field(kl.out, "top1_agree"), 0.2);
  EXPECT_LT(field(kl.out, "top1_agree"), 1.0);
  EXPECT_EQ(field(kl.out, "reference_ppl"), field(self.out, "ppl"));

  r = test::run_cli("quantize -o " + qft + " --quantizer rtn-clip --bits 2 --group 64 --finetune 1" + small);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(json::parse(read_text_file(qft + "/quantization_config.json")).contains("finetune"));

  auto bad = test::run_cli("quantize -o " + tmp.file("x") + " --bits 2 --finetune 1");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("--finetune needs calibration text"), std::string::npos) << bad.err;
  bad = test::run_cli("finetune -q " + kModel + " -o " + tmp.file("y") + " --calib " + calib);
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("must be an anybit quantized folder"), std::string::npos) << bad.err;
}

TEST(Cli, BadInputGivesOneLineErrorAndNonZeroExit) {
  test::TempDir tmp;
  // A model folder whose weights file is cut in half.
  const fs::path dir = tmp.path() / "truncated";
  fs::create_directories(dir);
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(fs::path(kModel) / f, dir / f);
  const std::string st = read_text_file(kModel + "/model.safetensors");
  test::write_file((dir / "model.safetensors").string(), st.substr(0, st.size() / 2));
  auto expect_clean_error = [](const test::CommandResult& r, const std::string& needle) {
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.exit_code, -1) << "crashed";
    EXPECT_EQ(r.out, "");
    EXPECT_NE(r.err.find("error: "), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  };
  expect_clean_error(test::run_cli("run -m " + dir.string() + " -p hi"), "model.safetensors");
  // An unknown architecture.
  std::string cfg = read_text_file(kModel + "/config.json");
  cfg.replace(cfg.find("\"llama\""), 7, "\"mamba\"");
  test::write_file((dir / "config.json").string(), cfg);
  expect_clean_error(test::run_cli("run -m " + dir.string() + " -p hi"), "mamba");
  expect_clean_error(test::run_cli("run -m /nonexistent/model -p hi"), "/nonexistent/model");
  expect_clean_error(test::run_cli("run -p hi --top-p 0"), "top_p");
  // Reduced-precision KV caches are GPU-only: asked for on the CPU, a clear refusal.
  expect_clean_error(test::run_cli("run -p hi --device cpu --kv-dtype i8"), "--kv-dtype i8");
  auto bad_kv = test::run_cli("run -p hi --kv-dtype q4");  // CLI11's own message
  EXPECT_NE(bad_kv.exit_code, 0);
  EXPECT_NE(bad_kv.err.find("--kv-dtype"), std::string::npos) << bad_kv.err;
  // A GGUF path that is not a GGUF file.
  test::write_file(tmp.file("fake.gguf"), "GGUF but not really");
  expect_clean_error(test::run_cli("run -m " + tmp.file("fake.gguf") + " -p hi"), "fake.gguf");
  // serve: random weights of a named shape (load benchmarks), refused with a model too or
  // with an unknown shape, before anything listens.
  expect_clean_error(test::run_cli("serve --shape tiny -m " + kModel + " --port 0"), "--shape");
  expect_clean_error(test::run_cli("serve --shape llama-70b --port 0"), "llama-70b");
}
