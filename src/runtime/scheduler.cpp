#include "runtime/scheduler.h"

#include <algorithm>
#include <cmath>
#include <omp.h>
#include <spdlog/spdlog.h>

#include "core/error.h"
#include "runtime/generate.h"

namespace anybit {

using Clock = std::chrono::steady_clock;

namespace {
double seconds_since(Clock::time_point t0, Clock::time_point t) { return std::chrono::duration<double>(t - t0).count(); }
const Clock::time_point kEpoch = Clock::now();
}  // namespace

struct Scheduler::Seq {
  Seq(std::shared_ptr<Request> r, RequestParams p, const Tokenizer& tok)
      : req(std::move(r)),
        tokens(std::move(p.prompt)),
        n_prompt(int64_t(tokens.size())),
        max_tokens(p.max_tokens),
        ignore_eos(p.ignore_eos),
        top_logprobs(p.top_logprobs),
        sampler(p.sampling),
        decoder(tok),
        stops(std::move(p.stop)) {}

  std::shared_ptr<Request> req;
  std::vector<int32_t> tokens;  // prompt, then generated ids; the last one is not in the KV yet
  int64_t n_prompt;
  int64_t max_tokens;
  bool ignore_eos;
  int top_logprobs;
  Sampler sampler;
  StreamDecoder decoder;
  StopMatcher stops;
  SequenceKV kv;
  int64_t registered = 0;  // prompt blocks already offered to the prefix table
  int64_t generated = 0;
  bool finished = false;
  Clock::time_point arrival = Clock::now(), last_token;

  uint64_t order() const { return req->id(); }
  int64_t pending() const { return int64_t(tokens.size()) - kv.n_tokens; }
};

// ---- Request -------------------------------------------------------------------

bool Request::wait(RequestUpdate& out, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(mu_);
  if (!cv_.wait_for(lk, timeout, [&] { return news_ || done_; })) return false;
  out = std::move(pending_);
  pending_ = RequestUpdate{};
  if (done_) {  // keep the final state for later calls
    pending_.finished = true;
    pending_.finish_reason = out.finish_reason;
    pending_.error = out.error;
    pending_.prompt_tokens = out.prompt_tokens;
    pending_.completion_tokens = out.completion_tokens;
  }
  news_ = false;
  return true;
}

void Request::cancel() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (done_) return;
  }
  cancel_.store(true);
  if (on_cancel_) on_cancel_();
}

void Request::deliver(std::string text, TokenOut* tok, const char* finish, std::string error, int64_t completion) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (done_) return;
    pending_.text += text;
    if (tok) pending_.tokens.push_back(std::move(*tok));
    pending_.prompt_tokens = prompt_tokens_;
    pending_.completion_tokens = completion;
    if (finish) {
      pending_.finished = true;
      pending_.finish_reason = finish;
      pending_.error = std::move(error);
      done_ = true;
    }
    news_ = true;
  }
  cv_.notify_all();
}

// ---- Scheduler -----------------------------------------------------------------

Scheduler::Scheduler(LlamaModel& model, KVCache& kv, const Tokenizer& tok, std::vector<int32_t> eos_ids,
                     SchedulerOptions opts)
    : Scheduler([&model](const std::vector<BatchEntry>& b, KVCache& k, ForwardOutput& o) { model.forward(b, k, o); },
                model.config(), kv, tok, std::move(eos_ids), opts) {}

Scheduler::Scheduler(ForwardFn forward, const ModelConfig& cfg, KVCache& kv, const Tokenizer& tok,
                     std::vector<int32_t> eos_ids, SchedulerOptions opts)
    : forward_(std::move(forward)), cfg_(cfg), kv_(kv), tok_(tok), eos_(std::move(eos_ids)), opts_(opts) {
  const int64_t model_ctx = cfg_.max_position;
  if (opts_.max_context <= 0) opts_.max_context = model_ctx > 0 ? model_ctx : 4096;
  if (model_ctx > 0) opts_.max_context = std::min(opts_.max_context, model_ctx);
  if (opts_.max_batch < 1) fail("max batch must be >= 1 (got {})", opts_.max_batch);
  if (opts_.max_queue < 0) fail("max queue must be >= 0 (got {})", opts_.max_queue);
  // Every running sequence must be able to decode in the same step.
  opts_.step_tokens = std::max(opts_.step_tokens, opts_.max_batch);
  stats_.kv_blocks_total = kv_.n_blocks();
  stats_.kv_blocks_free = kv_.free_blocks();
  stats_.kv_block_size = kv_.block_size();
}

Scheduler::~Scheduler() { stop(std::chrono::milliseconds(0)); }

SubmitResult Scheduler::submit(RequestParams p) {
  SubmitResult r;
  const int64_t n = int64_t(p.prompt.size());
  auto invalid = [&](std::string msg) {
    r.status = SubmitStatus::Invalid;
    r.error = std::move(msg);
    return r;
  };
  if (n == 0) return invalid("the prompt is empty");
  if (n >= opts_.max_context)
    return invalid(fmt::format("the prompt has {} tokens but the context holds {} (prompt plus at least one "
                               "generated token)", n, opts_.max_context));
  // A sequence alone must always fit, or preemption could not guarantee progress.
  if ((n + 1 + kv_.block_size() - 1) / kv_.block_size() > kv_.n_blocks())
    return invalid(fmt::format("the prompt has {} tokens but the KV cache holds only {}", n,
                               kv_.n_blocks() * kv_.block_size()));
  for (int32_t t : p.prompt)
    if (t < 0 || t >= cfg_.vocab)
      return invalid(fmt::format("token id {} is outside the vocabulary (size {})", t, cfg_.vocab));
  if (p.max_tokens < 1) return invalid(fmt::format("max_tokens must be >= 1 (got {})", p.max_tokens));
  p.max_tokens = std::min(p.max_tokens, opts_.max_context - n);
  try {
    p.sampling.validate();
  } catch (const Error& e) {
    return invalid(e.what());
  }

  auto req = std::make_shared<Request>();
  req->prompt_tokens_ = n;
  req->on_cancel_ = [this] { cv_.notify_all(); };
  std::lock_guard<std::mutex> lk(mu_);
  if (draining_ || stop_) {
    r.status = SubmitStatus::ShuttingDown;
    r.error = "the server is shutting down";
    return r;
  }
  if (int64_t(waiting_.size()) >= opts_.max_queue) {
    ++stats_.requests_rejected;
    r.status = SubmitStatus::QueueFull;
    r.error = fmt::format("the queue is full ({} requests waiting)", waiting_.size());
    return r;
  }
  req->id_ = next_id_++;
  waiting_.push_back(std::make_unique<Seq>(req, std::move(p), tok_));
  ++stats_.requests_submitted;
  stats_.waiting = int64_t(waiting_.size());
  r.status = SubmitStatus::Ok;
  r.request = std::move(req);
  cv_.notify_all();
  return r;
}

void Scheduler::release_kv(Seq& s) {
  const std::vector<int32_t> blocks = s.kv.blocks;
  kv_.release(s.kv);
  s.registered = 0;
  for (int32_t b : blocks) {
    if (kv_.refcount(b) != 0) continue;
    auto it = prefix_of_block_.find(b);
    if (it == prefix_of_block_.end()) continue;
    prefix_.erase(it->second);
    prefix_of_block_.erase(it);
  }
}

void Scheduler::finish(Seq& s, const char* reason, const std::string& error) {
  if (s.finished) return;
  s.finished = true;
  release_kv(s);
  std::string rest;
  if (std::string_view(reason) == "stop" || std::string_view(reason) == "length")
    if (!s.stops.stopped()) rest = s.stops.push(s.decoder.flush()) + s.stops.flush();
  s.req->deliver(std::move(rest), nullptr, reason, error, s.generated);
  std::lock_guard<std::mutex> lk(mu_);
  if (std::string_view(reason) == "cancelled") ++stats_.requests_cancelled;
  else if (std::string_view(reason) == "error") ++stats_.requests_failed;
  else ++stats_.requests_finished;
  stats_.prompt_tokens += uint64_t(s.n_prompt);
}

void Scheduler::take_cancellations() {
  for (auto& s : running_)
    if (s->req->cancel_requested()) finish(*s, "cancelled");
  std::vector<std::unique_ptr<Seq>> dropped;
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      if ((*it)->req->cancel_requested()) {
        dropped.push_back(std::move(*it));
        it = waiting_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& s : dropped) finish(*s, "cancelled");
}

void Scheduler::match_prefix(Seq& s) {
  if (!opts_.prefix_sharing || s.kv.n_tokens != 0 || !s.kv.blocks.empty()) return;
  const int64_t bs = kv_.block_size();
  // At least one token must be computed, since its logits give the next token.
  const int64_t max_blocks = (std::min<int64_t>(s.n_prompt, int64_t(s.tokens.size()) - 1)) / bs;
  int32_t parent = -1;
  for (int64_t i = 0; i < max_blocks; ++i) {
    PrefixKey key{parent, std::vector<int32_t>(s.tokens.begin() + i * bs, s.tokens.begin() + (i + 1) * bs)};
    auto it = prefix_.find(key);
    if (it == prefix_.end()) break;
    kv_.retain(it->second);
    s.kv.blocks.push_back(it->second);
    parent = it->second;
  }
  s.kv.n_tokens = int64_t(s.kv.blocks.size()) * bs;
  s.registered = int64_t(s.kv.blocks.size());
}

void Scheduler::register_prefix(Seq& s) {
  if (!opts_.prefix_sharing) return;
  const int64_t bs = kv_.block_size();
  const int64_t full = std::min(s.kv.n_tokens, s.n_prompt) / bs;
  for (; s.registered < full; ++s.registered) {
    const int64_t i = s.registered;
    const int32_t block = s.kv.blocks[size_t(i)];
    if (prefix_of_block_.count(block)) continue;
    PrefixKey key{i == 0 ? -1 : s.kv.blocks[size_t(i - 1)],
                  std::vector<int32_t>(s.tokens.begin() + i * bs, s.tokens.begin() + (i + 1) * bs)};
    if (prefix_.count(key)) continue;  // an identical block computed by another sequence in the same step
    prefix_.emplace(key, block);
    prefix_of_block_.emplace(block, std::move(key));
  }
}

void Scheduler::admit() {
  const int64_t bs = kv_.block_size();
  while (int64_t(running_.size()) < opts_.max_batch) {
    std::unique_ptr<Seq> s;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (waiting_.empty()) break;
      s = std::move(waiting_.front());
      waiting_.pop_front();
    }
    match_prefix(*s);
    // Admit only when its first chunk fits, keeping a small reserve for the running
    // sequences' decode growth, so that admission does not cause preemption at once.
    const int64_t first = std::min(s->pending(), opts_.step_tokens);
    const int64_t need =
        std::max<int64_t>(0, (s->kv.n_tokens + first + bs - 1) / bs - int64_t(s->kv.blocks.size()));
    const int64_t reserve = running_.empty() ? 0 : std::max<int64_t>(1, int64_t(running_.size()) / 4);
    if (!running_.empty() && need + reserve > kv_.free_blocks()) {
      release_kv(*s);
      std::lock_guard<std::mutex> lk(mu_);
      waiting_.push_front(std::move(s));
      break;
    }
    if (s->kv.n_tokens > 0) {
      std::lock_guard<std::mutex> lk(mu_);
      stats_.prefix_hit_tokens += uint64_t(s->kv.n_tokens);
    }
    running_.push_back(std::move(s));
  }
  std::stable_sort(running_.begin(), running_.end(), [](const auto& a, const auto& b) { return a->order() < b->order(); });
}

void Scheduler::preempt(Seq& victim, std::vector<Planned>& plan) {
  plan.erase(std::remove_if(plan.begin(), plan.end(), [&](const Planned& p) { return p.seq == &victim; }), plan.end());
  release_kv(victim);
  auto it = std::find_if(running_.begin(), running_.end(), [&](const auto& p) { return p.get() == &victim; });
  std::unique_ptr<Seq> owned = std::move(*it);
  running_.erase(it);
  std::lock_guard<std::mutex> lk(mu_);
  ++stats_.preemptions;
  // Keep the queue in arrival order: a preempted sequence is older than anything new.
  auto pos = std::find_if(waiting_.begin(), waiting_.end(), [&](const auto& w) { return w->order() > owned->order(); });
  waiting_.insert(pos, std::move(owned));
}

int64_t Scheduler::ensure_blocks(Seq& s, int64_t n, bool can_shrink, std::vector<Planned>& plan) {
  const int64_t bs = kv_.block_size();
  while (true) {
    if (kv_.reserve(s.kv, s.kv.n_tokens + n)) return n;
    if (can_shrink) {
      const int64_t cap = (int64_t(s.kv.blocks.size()) + kv_.free_blocks()) * bs - s.kv.n_tokens;
      if (cap > 0) {
        n = std::min(n, cap);
        continue;
      }
    }
    // The youngest running sequence younger than s gives its blocks back.
    Seq* victim = nullptr;
    for (auto it = running_.rbegin(); it != running_.rend(); ++it)
      if ((*it)->order() > s.order() && !(*it)->finished) {
        victim = it->get();
        break;
      }
    if (!victim) return 0;
    preempt(*victim, plan);
  }
}

bool Scheduler::plan(std::vector<Planned>& plan) {
  int64_t budget = opts_.step_tokens;
  // Decodes first (oldest first): they keep inter-token latency low; then prefill
  // chunks in arrival order with what is left of the budget.
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
      Seq& s = *running_[i];
      if (s.finished) continue;
      const bool decode = s.pending() == 1;
      if (decode != (pass == 0)) continue;
      if (s.kv.n_tokens + 1 > opts_.max_context) {
        finish(s, "length");
        continue;
      }
      const int64_t want = std::min(s.pending(), budget);
      const int64_t got = ensure_blocks(s, want, !decode, plan);
      if (got > 0) {
        plan.push_back({&s, got});
        budget -= got;
        continue;
      }
      // Nothing younger is left to preempt. If older sequences hold blocks, step
      // aside until they finish; alone, the sequence has outgrown the whole cache.
      const bool older_running = std::any_of(running_.begin(), running_.end(), [&](const auto& o) {
        return o.get() != &s && !o->finished && o->order() < s.order();
      });
      if (older_running) {
        preempt(s, plan);  // removes running_[i]: the next one moves into slot i
        --i;               // (unsigned wrap-around at 0 is undone by the loop's ++i)
      } else {
        finish(s, "length");
      }
    }
  }
  return !plan.empty();
}

void Scheduler::emit_token(Seq& s, const float* logits, int32_t id) {
  const int64_t vocab = cfg_.vocab;
  const auto now = Clock::now();
  if (id < 0) id = s.sampler.sample(logits, vocab, s.tokens);
  TokenOut t;
  t.id = id;
  if (s.top_logprobs >= 0) {
    float mx = logits[0];
    for (int64_t i = 1; i < vocab; ++i) mx = std::max(mx, logits[i]);
    double sum = 0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(double(logits[i] - mx));
    t.logprob = float(double(logits[id] - mx) - std::log(sum));
    if (s.top_logprobs > 0) t.top = Sampler::top_logprobs(logits, vocab, s.top_logprobs);
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (s.generated == 0) stats_.ttft.observe(seconds_since(s.arrival, now));
    else stats_.itl.observe(seconds_since(s.last_token, now));
    ++stats_.generated_tokens;
    rate_.add(seconds_since(kEpoch, now), 1);
  }
  s.last_token = now;
  const bool is_eos = std::find(eos_.begin(), eos_.end(), id) != eos_.end();
  if (is_eos && !s.ignore_eos) {
    finish(s, "stop");
    return;
  }
  s.tokens.push_back(id);
  ++s.generated;
  std::string text = s.stops.push(s.decoder.push(id));
  if (s.stops.stopped()) {
    s.req->deliver(std::move(text), &t, nullptr, {}, s.generated);
    finish(s, "stop");
    return;
  }
  s.req->deliver(std::move(text), &t, nullptr, {}, s.generated);
  if (s.generated >= s.max_tokens || int64_t(s.tokens.size()) >= opts_.max_context) finish(s, "length");
}

void Scheduler::after_forward(const std::vector<Planned>& plan, const ForwardOutput& out) {
  // Rows that produce a token this step; with a device sampler and at least two of them, all
  // rows are sampled in one call (rows mid-prompt ride along as greedy requests, their ids
  // unused). One row is faster on the host (docs/PERFORMANCE.md).
  // A request whose client gave a seed stays on the host: the device draws its token in another
  // order, so the same seed would give other tokens depending on the batch. Greedy requests give
  // the same token either way.
  auto emits = [](const Seq& s) { return s.pending() == 0 && !s.finished; };
  auto device_ok = [](const Seq& s) { return s.sampler.params().temperature == 0.0f || !s.sampler.params().seeded; };
  size_t eligible = 0;
  for (const Planned& p : plan) eligible += emits(*p.seq) && device_ok(*p.seq);
  bool on_device = false;
  if (sample_ && eligible >= 2) {
    static const SamplingParams kGreedy;
    std::vector<SampleRequest> req(plan.size());
    for (size_t i = 0; i < plan.size(); ++i) {
      Seq& s = *plan[i].seq;
      if (emits(s) && device_ok(s)) req[i] = s.sampler.request(s.tokens, cfg_.vocab);
      else req[i].params = &kGreedy;
    }
    on_device = sample_(req, device_ids_);
  }
  for (size_t i = 0; i < plan.size(); ++i) {
    Seq& s = *plan[i].seq;
    register_prefix(s);
    if (emits(s)) emit_token(s, out.row(i), on_device && device_ok(s) ? device_ids_[i] : -1);
  }
}

void Scheduler::remove_finished() {
  running_.erase(std::remove_if(running_.begin(), running_.end(), [](const auto& s) { return s->finished; }),
                 running_.end());
}

void Scheduler::publish() {
  std::lock_guard<std::mutex> lk(mu_);
  stats_.waiting = int64_t(waiting_.size());
  stats_.running = int64_t(running_.size());
  stats_.kv_blocks_free = kv_.free_blocks();
}

bool Scheduler::step() {
  take_cancellations();
  remove_finished();
  admit();
  std::vector<Planned> batch;
  const bool work = plan(batch);
  if (work) {
    std::vector<BatchEntry> entries;
    entries.reserve(batch.size());
    int64_t total = 0;
    for (const auto& p : batch) total += p.n;
    batch_tokens_.resize(size_t(total));
    int64_t off = 0;
    for (const auto& p : batch) {
      std::copy_n(p.seq->tokens.begin() + p.seq->kv.n_tokens, p.n, batch_tokens_.begin() + off);
      entries.push_back(BatchEntry{&p.seq->kv, batch_tokens_.data() + off, p.n, false});
      off += p.n;
    }
    try {
      forward_(entries, kv_, out_);
      after_forward(batch, out_);
    } catch (const std::exception& e) {
      // The blocks were reserved beforehand, so this is a model failure, not a full cache.
      spdlog::error("forward pass failed: {}", e.what());
      for (const auto& p : batch) finish(*p.seq, "error", e.what());
    }
    std::lock_guard<std::mutex> lk(mu_);
    ++stats_.steps;
    stats_.computed_tokens += uint64_t(total);
  }
  remove_finished();
  publish();
  return work;
}

void Scheduler::engine_loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !waiting_.empty() || !running_.empty(); });
      if (stop_) break;
    }
    try {
      step();
    } catch (const std::exception& e) {
      // Nothing in a step should throw (forward errors are handled inside); if
      // something does, fail the running requests rather than leave clients waiting.
      spdlog::error("scheduler step failed: {}", e.what());
      for (auto& s : running_) finish(*s, "error", e.what());
      running_.clear();
      publish();
    }
  }
  // Whatever is left is cancelled so that no consumer waits forever.
  for (auto& s : running_) finish(*s, "cancelled");
  running_.clear();
  std::deque<std::unique_ptr<Seq>> left;
  {
    std::lock_guard<std::mutex> lk(mu_);
    left.swap(waiting_);
  }
  for (auto& s : left) finish(*s, "cancelled");
  publish();
}

void Scheduler::start() {
  if (thread_.joinable()) return;
  // OpenMP's thread count is a per-thread setting: a new thread would use every
  // core again, whatever --threads said on the thread that configured it.
  const int threads = omp_get_max_threads();
  thread_ = std::thread([this, threads] {
    omp_set_num_threads(threads);
    engine_loop();
  });
}

void Scheduler::stop(std::chrono::milliseconds grace) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    draining_ = true;
  }
  if (thread_.joinable()) {
    const auto deadline = Clock::now() + grace;
    while (Clock::now() < deadline) {
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (waiting_.empty() && stats_.running == 0) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  } else {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  SchedulerStats s = stats_;
  s.tokens_per_second = rate_.rate(seconds_since(kEpoch, Clock::now()));
  return s;
}

}  // namespace anybit
