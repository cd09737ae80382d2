// `anybit bench`: prefill and decode throughput like llama-bench (median of repetitions).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <omp.h>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "kernels/dispatch.h"
#include "kernels/qbits.h"
#include "quant/random_qbits.h"
#include "runtime/random_model.h"

namespace anybit::cli {

namespace {

struct BenchArgs {
  ModelArgs model;
  std::string shape;
  std::string dtype = "bf16";
  int64_t p = 64, n = 32;
  int reps = 5;
  int bits = 0, group = 128;  // --bits: a random any-bit (QBITS) model of --shape
  int act_bits = 0;           // --act-bits 8: its matrices W*A8
  int64_t parallel = 1;       // --parallel N: the tg test decodes N sequences per step
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

int run_bench(const BenchArgs& a) {
  std::unique_ptr<Engine> engine;
  EngineOptions o;
  o.threads = a.model.threads;
  o.device = a.model.device;
  o.kv_dtype = parse_kv_dtype(a.model.kv_dtype);
  // The cache holds the test's tokens, or -c positions when given (a deployment sizes it
  // for the model's context, and decode should not pay for the unused part).
  o.max_context = std::max<int64_t>(std::max<int64_t>(a.p, a.n + 1) + 16, a.model.ctx);
  o.max_sequences = a.parallel;
  std::string name;
  if (!a.shape.empty() && a.bits > 0) {
    engine = std::make_unique<Engine>(make_random_qbits_model(named_shape(a.shape), a.bits, a.group, 1234, a.act_bits), o);
    name = a.shape + " (random)";
  } else if (!a.shape.empty()) {
    engine = std::make_unique<Engine>(make_random_model(named_shape(a.shape), parse_float_dtype(a.dtype), 1234), o);
    name = a.shape + " (random)";
  } else {
    ModelArgs m = a.model;
    m.ctx = o.max_context;
    engine = load_engine(m, a.parallel);
    name = model_path_or_default(a.model.path);
  }
  const ModelConfig& c = engine->config();
  size_t matrix_bytes = 0;
  int64_t params = 0;
  for (const auto& [_, t] : engine->files().weights->all()) {
    params += t.numel();
    matrix_bytes += t.nbytes;
  }
  const double bpw = 8.0 * double(matrix_bytes) / double(params);
  // Any-bit weights: their bits per weight and the kernel chosen for decode and prefill.
  std::string label = a.dtype, qbits_line;
  for (const auto& [tname, t] : engine->files().weights->all())
    if (t.dtype == DType::QBITS && t.data) {
      const auto& q = *static_cast<const QuantizedWeight*>(t.data);
      label = "q" + std::to_string(q.bits) + "g" + std::to_string(q.group) + (q.act_bits == 8 ? "a8" : "");
      const int64_t pm = std::max<int64_t>(a.p, 1);
      // The CPU names come from its measured kernel choice; the GPU has one path per batch size.
      const bool gpu = engine->device() == Device::Cuda;
      const bool a8 = q.act_bits == 8;
      const std::string tg_kernel = !gpu ? qbits_kernel_name(q, 1)
                                    : a8 ? fmt::format("cuda a8_qbits w{}a8 (int8 mma)", q.bits)
                                         : fmt::format("cuda gemv_qbits w{}a16 (SIMT; tensor-core for K >= 12288)", q.bits);
      const std::string pp_kernel = !gpu     ? qbits_kernel_name(q, pm)
                                    : a8     ? tg_kernel
                                    : pm <= 8 ? fmt::format("cuda gemv_qbits w{}a16 (tensor-core)", q.bits)
                                    : pm <= 16 ? fmt::format("cuda gemv_qbits w{}a16 (tensor-core) or mma_qbits, per matrix", q.bits)
                                    : pm <= 64 ? fmt::format("cuda mma_qbits w{}a16", q.bits)
                                               : std::string("cuda dequantize to bf16 + gemm");
      qbits_line = fmt::format("qbits: {} bits, group {}, {}: {:.3f} bits per weight; kernel tg (m=1): {}, pp (m={}): {}",
                               q.bits, q.group, q.asymmetric ? "asymmetric" : "symmetric", q.bits_per_weight(), tg_kernel,
                               pm, pp_kernel);
      break;
    }
  std::mt19937 rng(7);
  std::vector<int32_t> prompt(size_t(std::max<int64_t>(a.p, 1)));
  for (auto& t : prompt) t = int32_t(rng() % uint32_t(c.vocab));

  auto time_it = [](auto&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  KVCache& kv = engine->kv();
  ForwardOutput out;
  auto prefill = [&] {
    SequenceKV seq;
    engine->model().forward({BatchEntry{&seq, prompt.data(), a.p, false}}, kv, out);
    kv.release(seq);
  };
  // N sequences (--parallel) decode together: one forward call of N one-token entries per
  // step, each continuing greedily from its own logits row (batched decode, as a server runs it).
  auto decode = [&] {
    std::vector<SequenceKV> seqs(size_t(a.parallel));
    std::vector<int32_t> ids(size_t(a.parallel));
    for (size_t j = 0; j < ids.size(); ++j) ids[j] = prompt[j % prompt.size()];
    std::vector<BatchEntry> batch(size_t(a.parallel));
    for (int64_t i = 0; i < a.n; ++i) {
      for (size_t j = 0; j < batch.size(); ++j) batch[j] = BatchEntry{&seqs[j], &ids[j], 1, false};
      engine->model().forward(batch, kv, out);
      for (size_t j = 0; j < ids.size(); ++j)
        ids[j] = int32_t(std::max_element(out.row(j), out.row(j) + out.vocab) - out.row(j));
    }
    for (auto& s : seqs) kv.release(s);
  };
  std::vector<double> pp, tg;
  if (a.p > 0) prefill();  // warm-up
  if (a.n > 0) decode();
  for (int r = 0; r < a.reps; ++r) {
    if (a.p > 0) pp.push_back(double(a.p) / time_it(prefill));
    if (a.n > 0) tg.push_back(double(a.n * a.parallel) / time_it(decode));
  }
  const int threads = a.model.threads > 0 ? a.model.threads : omp_get_max_threads();
  std::printf("| model | params | size | bpw | kernels | threads | test | t/s (median of %d) |\n", a.reps);
  std::printf("|---|---|---|---|---|---|---|---|\n");
  auto row = [&](const char* test, int64_t n, const std::vector<double>& v) {
    std::printf("| %s | %.2f B | %.2f GiB | %.2f | %s %s | %d | %s%lld | %.2f (min %.2f, max %.2f) |\n", name.c_str(),
                double(params) / 1e9, double(matrix_bytes) / double(1u << 30), bpw,
                engine->model().name().c_str(), label.c_str(), threads, test, (long long)n, median(v),
                *std::min_element(v.begin(), v.end()), *std::max_element(v.begin(), v.end()));
  };
  if (!pp.empty()) row("pp", a.p, pp);
  if (!tg.empty()) {
    if (a.parallel > 1) std::printf("tg: %lld sequences decoding together; t/s counts the tokens of all of them\n",
                                    (long long)a.parallel);
    row(a.parallel > 1 ? ("x" + std::to_string(a.parallel) + " tg").c_str() : "tg", a.n, tg);
  }
  if (!qbits_line.empty()) std::printf("%s\n", qbits_line.c_str());
  return 0;
}

}  // namespace

void register_bench(CLI::App& app) {
  auto* a = new BenchArgs();
  auto* sub = app.add_subcommand("bench", "Prefill/decode throughput (like llama-bench)");
  a->model.add(sub);
  sub->add_option("--shape", a->shape, "Named random-weight shape instead of -m (llama-1b, llama-8b, tiny)");
  sub->add_option("--dtype", a->dtype, "Weight dtype of a --shape model: bf16, f16, f32");
  sub->add_option("-p,--n-prompt", a->p, "Prompt tokens (pp test)")->check(CLI::Range(int64_t(0), int64_t(1) << 16));
  sub->add_option("-n,--n-gen", a->n, "Generated tokens (tg test)")->check(CLI::Range(int64_t(0), int64_t(1) << 16));
  sub->add_option("-r,--repetitions", a->reps, "Repetitions")->check(CLI::Range(1, 1000));
  sub->add_option("--bits", a->bits, "Random any-bit model of --shape with this many bits per weight (2..8)")
      ->check(CLI::Range(2, 8));
  sub->add_option("--act-bits", a->act_bits, "With --bits: 8 = int8 activations per token (W*A8)")
      ->check(CLI::IsMember({0, 8}));
  sub->add_option("--group", a->group, "Group size of --bits (32, 64, 128)")->check(CLI::IsMember({32, 64, 128}));
  sub->add_option("--parallel", a->parallel, "Sequences decoding together in the tg test (batched decode; t/s of all)")
      ->check(CLI::Range(int64_t(1), int64_t(256)));
  add_command(sub, [a] { return run_bench(*a); });
}

}  // namespace anybit::cli
