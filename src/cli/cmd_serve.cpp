// `anybit serve`: the OpenAI-compatible HTTP server over the continuous-batching
// scheduler. Prints "listening on http://HOST:PORT" on stdout once it accepts
// connections; SIGTERM/SIGINT drain in-flight requests and exit 0.
#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "quant/random_qbits.h"
#include "runtime/random_model.h"
#include "runtime/scheduler.h"
#include "server/server.h"
#include "tokenizer/chat_template.h"

namespace anybit::cli {

namespace {

struct ServeArgs {
  ModelArgs model;
  std::string host = "127.0.0.1";
  int port = 8080;
  int64_t max_batch = 16;
  int64_t max_queue = 64;
  int64_t step_tokens = 256;
  std::string kv_memory;  // empty = max_batch full contexts, at most 1 GiB
  std::string alias;
  double shutdown_grace = 5.0;
  bool no_prefix_sharing = false;
  bool verbose = false;
  // Load benchmarks: random weights of a named shape (tokenizer of the embedded model).
  std::string shape, dtype = "bf16";
  int bits = 0, group = 128;
};

// --shape: random weights, so a serving benchmark on a large shape needs no checkpoint.
// The named shapes' vocabulary (8192) is the embedded model's, whose tokenizer they borrow.
ModelFiles random_model_files(const ServeArgs& a) {
  ModelFiles files;
  const ModelConfig cfg = named_shape(a.shape);
  files = a.bits > 0 ? make_random_qbits_model(cfg, a.bits, a.group, 1234)
                     : make_random_model(cfg, parse_float_dtype(a.dtype), 1234);
  ModelFiles tok = load_model_files(model_path_or_default(""));
  if (tok.config.vocab != cfg.vocab)
    fail("--shape {}: vocabulary {} differs from the embedded tokenizer's {}", a.shape, cfg.vocab, tok.config.vocab);
  files.tokenizer = std::move(tok.tokenizer);
  files.path = a.shape + (a.bits > 0 ? fmt::format("-w{}g{}", a.bits, a.group) : "-" + a.dtype);
  return files;
}

// "512M", "1.5G", "2GiB", "1048576" -> bytes.
size_t parse_size(const std::string& s) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (const std::exception&) {
    fail("--kv-memory: '{}' is not a size (e.g. 512M, 2G)", s);
  }
  std::string unit = s.substr(pos);
  for (auto& c : unit) c = char(std::toupper(static_cast<unsigned char>(c)));
  if (unit.size() > 1 && unit.back() == 'B') unit.pop_back();
  if (unit.size() > 1 && unit.back() == 'I') unit.pop_back();
  double mult = 1;
  if (unit == "K") mult = 1024.0;
  else if (unit == "M") mult = 1048576.0;
  else if (unit == "G") mult = 1073741824.0;
  else if (!unit.empty() && unit != "B") fail("--kv-memory: unknown unit in '{}' (use K, M or G)", s);
  if (!(v > 0) || !std::isfinite(v)) fail("--kv-memory must be positive (got '{}')", s);
  return size_t(v * mult);
}

std::string model_id(const std::string& path) {
  std::filesystem::path p(path);
  while (!p.empty() && p.filename().empty()) p = p.parent_path();  // "models/x/"
  return p.extension() == ".gguf" ? p.stem().string() : p.filename().string();
}

int serve(const ServeArgs& a) {
  if (a.verbose) spdlog::set_level(spdlog::level::debug);
  // Signals are taken by one thread with sigwait; every thread started from here
  // on inherits the blocked mask. A client that vanishes must not kill us either.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // The engine's KV cache is sized in whole contexts; --kv-memory picks how many.
  if (!a.shape.empty() && !a.model.path.empty()) fail("give -m or --shape, not both");
  const auto t0 = std::chrono::steady_clock::now();
  ModelFiles files = a.shape.empty() ? load_model_files(model_path_or_default(a.model.path)) : random_model_files(a);
  const std::string path = files.path;
  const ModelConfig& c = files.config;
  int64_t ctx = a.model.ctx > 0 && c.max_position > 0 ? std::min(a.model.ctx, c.max_position)
                      : a.model.ctx > 0                     ? a.model.ctx
                                                            : c.max_position;
  if (ctx <= 0) ctx = 4096;  // what the engine assumes when the model does not say
  // Bytes of one full context in the cache the backend will keep (f16 by default on the GPU).
  const double elem = kv_elem_bytes(resolve_device(a.model.device), parse_kv_dtype(a.model.kv_dtype), c.head_dim);
  const size_t per_ctx = size_t(double(c.n_layers * 2 * c.n_kv_heads * c.head_dim) * elem * double(ctx));
  const size_t budget = a.kv_memory.empty() ? std::min(size_t(a.max_batch) * per_ctx, size_t(1) << 30)
                                            : parse_size(a.kv_memory);
  EngineOptions eo;
  eo.threads = a.model.threads;
  eo.max_context = ctx;
  eo.max_sequences = std::max<int64_t>(1, int64_t(budget / per_ctx));
  eo.device = a.model.device;
  eo.kv_dtype = parse_kv_dtype(a.model.kv_dtype);
  auto engine = std::make_unique<Engine>(std::move(files), eo);
  spdlog::info("loaded {} ({}, {} layers, {:.1f} MiB) in {:.2f}s, backend: {}", path, engine->files().format,
               engine->config().n_layers, double(engine->model().weight_bytes()) / 1048576.0,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), engine->model().name());
  const Tokenizer& tok = engine->tokenizer();
  if (tok.chat_template().empty()) spdlog::info("the model has no chat template; /v1/chat/completions uses ChatML");
  std::unique_ptr<ChatTemplate> tmpl;
  try {
    tmpl = std::make_unique<ChatTemplate>(ChatTemplate::for_tokenizer(tok));
  } catch (const Error& e) {
    spdlog::warn("the model's chat template does not parse ({}); using ChatML", e.what());
    tmpl = std::make_unique<ChatTemplate>(default_chatml(), "ChatML");
  }

  SchedulerOptions so;
  so.max_batch = a.max_batch;
  so.max_queue = a.max_queue;
  so.step_tokens = a.step_tokens;
  so.max_context = engine->max_context();
  so.prefix_sharing = !a.no_prefix_sharing;
  auto& backend = engine->model();
  Scheduler sched([&backend](const std::vector<BatchEntry>& b, KVCache& kv, ForwardOutput& o) { backend.forward(b, kv, o); },
                  engine->config(), engine->kv(), tok, engine->config().eos_ids, so);
  if (backend.has_device_sampler())
    sched.set_device_sampler(
        [&backend](const std::vector<SampleRequest>& r, std::vector<int32_t>& ids) { return backend.sample_last(r, ids); });

  server::ModelInfo info;
  info.id = a.alias.empty() ? model_id(path) : a.alias;
  info.created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  info.max_context = sched.max_context();
  info.tokenizer = &tok;
  info.chat_template = tmpl.get();
  server::ServerOptions opts;
  opts.host = a.host;
  opts.port = a.port;
  server::HttpServer http(sched, info, opts);
  const int port = http.bind();
  sched.start();
  spdlog::info("serving '{}': context {}, KV {} blocks of {} ({:.0f} MiB), max batch {}, max queue {}", info.id,
               info.max_context, engine->kv().n_blocks(), engine->kv().block_size(),
               double(engine->kv().bytes()) / 1048576.0, a.max_batch, a.max_queue);
  std::printf("listening on http://%s:%d\n", a.host.c_str(), port);
  std::fflush(stdout);

  const auto grace = std::chrono::milliseconds(int64_t(a.shutdown_grace * 1000));
  std::thread watcher([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    spdlog::info("{}: finishing in-flight requests (up to {:.1f}s), then exiting", sig == SIGINT ? "SIGINT" : "SIGTERM",
                 a.shutdown_grace);
    http.shutdown(grace);
  });
  http.serve();
  // serve() also returns when the listener fails; wake the watcher so it can end.
  pthread_kill(watcher.native_handle(), SIGTERM);
  watcher.join();
  const auto st = sched.stats();
  spdlog::info("stopped: {} requests finished, {} cancelled, {} tokens generated", st.requests_finished,
               st.requests_cancelled, st.generated_tokens);
  return 0;
}

}  // namespace

void register_serve(CLI::App& app) {
  auto* a = new ServeArgs();  // lives for the process
  auto* sub = app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching");
  a->model.add(sub);
  sub->add_option("--host", a->host, "Address to listen on");
  sub->add_option("--port", a->port, "Port (0 = any free port)")->check(CLI::Range(0, 65535));
  sub->add_option("--max-batch", a->max_batch, "Most sequences decoded together")->check(CLI::Range(int64_t(1), int64_t(4096)));
  sub->add_option("--max-queue", a->max_queue, "Most requests waiting for a slot; more get HTTP 429")
      ->check(CLI::Range(int64_t(0), int64_t(100000)));
  sub->add_option("--kv-memory", a->kv_memory, "KV cache size, e.g. 512M or 2G (default: max-batch full contexts, at most 1G)");
  sub->add_option("--step-tokens", a->step_tokens, "Token budget of one batched step (prefill chunks + decodes)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  sub->add_option("--alias", a->alias, "Model name clients use (default: the model folder or file name)");
  sub->add_option("--shutdown-grace", a->shutdown_grace, "Seconds in-flight requests get to finish on SIGTERM")
      ->check(CLI::Range(0.0, 3600.0));
  sub->add_flag("--no-prefix-sharing", a->no_prefix_sharing, "Do not share identical prompt KV blocks");
  sub->add_flag("-v,--verbose", a->verbose, "Log every HTTP request");
  sub->add_option("--shape", a->shape, "Serve random weights of a named shape (llama-1b, llama-8b, tiny) for load benchmarks");
  sub->add_option("--dtype", a->dtype, "Weight dtype of a --shape model: bf16, f16, f32");
  sub->add_option("--bits", a->bits, "Random any-bit (QBITS) --shape model with this many bits (2..8)")->check(CLI::Range(2, 8));
  sub->add_option("--group", a->group, "Group size of a --bits model")->check(CLI::IsMember({32, 64, 128}));
  add_command(sub, [a] { return serve(*a); });
}

}  // namespace anybit::cli
