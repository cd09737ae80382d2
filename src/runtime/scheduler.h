// Iteration-level continuous batching (Orca) with chunked prefill (Dynamic
// SplitFuse): every step runs one forward pass over all running sequences, each
// decoding one token or prefilling a chunk of its prompt, under a token budget.
// Requests join the running batch at the next step after they arrive.
//
// KV blocks are reserved step by step, on demand. When they run out the youngest
// running sequence is preempted: its blocks are freed and it goes back to the
// head of the queue to be recomputed later, keeping its sampler state, so its
// output is the same as if it had never been interrupted. The oldest sequence is
// never preempted for a younger one, which guarantees progress.
//
// Prompt blocks that are full are registered in a prefix table keyed by (parent
// block, block tokens); a new sequence whose prompt starts with the same blocks
// retains them instead of recomputing them (vLLM's automatic prefix caching,
// limited to blocks some live sequence still holds).
//
// Threading: one engine thread calls step() (start() runs it); any thread may
// submit(), cancel a Request, or read stats().
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "model/llama.h"
#include "runtime/sampler.h"
#include "runtime/sched_stats.h"
#include "tokenizer/tokenizer.h"

namespace anybit {

struct SchedulerOptions {
  int64_t max_batch = 16;      // sequences in the running batch
  int64_t max_queue = 64;      // requests waiting for a slot; more are refused
  int64_t step_tokens = 256;   // token budget of one step (decodes + prefill chunks)
  int64_t max_context = 0;     // positions per sequence (0 = the model's)
  bool prefix_sharing = true;
};

struct RequestParams {
  std::vector<int32_t> prompt;
  int64_t max_tokens = 16;
  SamplingParams sampling;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  int top_logprobs = -1;       // < 0: no logprobs; otherwise also the n most likely tokens
};

struct TokenOut {
  int32_t id = 0;
  float logprob = 0;           // when logprobs were asked for
  std::vector<TokenProb> top;
};

// What a consumer receives: everything that happened since its last wait().
struct RequestUpdate {
  std::string text;            // newly safe text (never a partial UTF-8 char or a stop string)
  std::vector<TokenOut> tokens;
  bool finished = false;
  std::string finish_reason;   // "stop" | "length" | "cancelled" | "error"
  std::string error;           // for "error"
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

class Request {
 public:
  // Waits until there is news or `timeout` passes (returns false then).
  // After the update with finished = true, every call returns that state again.
  bool wait(RequestUpdate& out, std::chrono::milliseconds timeout);
  // Asks the scheduler to drop the request; its KV blocks are freed at the next step.
  void cancel();
  bool cancel_requested() const { return cancel_.load(); }
  uint64_t id() const { return id_; }
  int64_t prompt_tokens() const { return prompt_tokens_; }

 private:
  friend class Scheduler;
  void deliver(std::string text, TokenOut* tok, const char* finish, std::string error, int64_t completion);

  uint64_t id_ = 0;
  int64_t prompt_tokens_ = 0;
  std::atomic<bool> cancel_{false};
  std::function<void()> on_cancel_;  // wakes the engine thread
  std::mutex mu_;
  std::condition_variable cv_;
  RequestUpdate pending_;
  bool news_ = false, done_ = false;
};

enum class SubmitStatus { Ok, QueueFull, Invalid, ShuttingDown };

struct SubmitResult {
  SubmitStatus status = SubmitStatus::Invalid;
  std::shared_ptr<Request> request;
  std::string error;
};

// LlamaModel::forward's contract (any backend with it will do).
using ForwardFn = std::function<void(const std::vector<BatchEntry>&, KVCache&, ForwardOutput&)>;
// ModelBackend::sample_last's contract: one request per logits row of the last forward;
// false means "sample on the host".
using SampleFn = std::function<bool(const std::vector<SampleRequest>&, std::vector<int32_t>&)>;

class Scheduler {
 public:
  Scheduler(ForwardFn forward, const ModelConfig& cfg, KVCache& kv, const Tokenizer& tok,
            std::vector<int32_t> eos_ids, SchedulerOptions opts);
  Scheduler(LlamaModel& model, KVCache& kv, const Tokenizer& tok, std::vector<int32_t> eos_ids, SchedulerOptions opts);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  SubmitResult submit(RequestParams p);
  // Samples where the logits are (a GPU backend): one call per step for every row, when two or
  // more rows emit a token and may use it (greedy, or sampled without a client seed). Set
  // before start(). Log-probabilities still come from the host logits.
  void set_device_sampler(SampleFn fn) { sample_ = std::move(fn); }

  // One iteration: drop cancelled requests, admit waiting ones, run one forward
  // pass and hand out the sampled tokens. Returns false when there was nothing to do.
  bool step();

  // Runs step() on an engine thread until stop().
  void start();
  // Refuses new requests, lets the queued and running ones finish within `grace`,
  // cancels what is left and joins the engine thread.
  void stop(std::chrono::milliseconds grace);

  SchedulerStats stats() const;
  const SchedulerOptions& options() const { return opts_; }
  int64_t max_context() const { return opts_.max_context; }

  // For tests: refcount-checked view of the prefix table.
  size_t prefix_table_size() const { return prefix_.size(); }

 private:
  struct Seq;
  struct PrefixKey {
    int32_t parent;
    std::vector<int32_t> tokens;
    bool operator<(const PrefixKey& o) const {
      return parent != o.parent ? parent < o.parent : tokens < o.tokens;
    }
  };
  struct Planned {
    Seq* seq;
    int64_t n;
  };

  void take_cancellations();
  void admit();
  bool plan(std::vector<Planned>& out);
  int64_t ensure_blocks(Seq& s, int64_t n, bool can_shrink, std::vector<Planned>& plan);
  void preempt(Seq& victim, std::vector<Planned>& plan);
  void after_forward(const std::vector<Planned>& plan, const ForwardOutput& out);
  // id < 0: sample on the host from `logits`.
  void emit_token(Seq& s, const float* logits, int32_t id = -1);
  void finish(Seq& s, const char* reason, const std::string& error = {});
  void release_kv(Seq& s);
  void match_prefix(Seq& s);
  void register_prefix(Seq& s);
  void remove_finished();
  void publish();
  void engine_loop();

  ForwardFn forward_;
  SampleFn sample_;
  std::vector<int32_t> device_ids_;
  const ModelConfig& cfg_;
  KVCache& kv_;
  const Tokenizer& tok_;
  std::vector<int32_t> eos_;
  SchedulerOptions opts_;
  uint64_t next_id_ = 1;

  // Engine-thread state.
  std::vector<std::unique_ptr<Seq>> running_;  // in arrival order
  std::map<PrefixKey, int32_t> prefix_;
  std::map<int32_t, PrefixKey> prefix_of_block_;
  ForwardOutput out_;
  std::vector<int32_t> batch_tokens_;

  // Shared state, under mu_.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Seq>> waiting_;  // arrival order; preempted ones go back to the front
  bool draining_ = false, stop_ = false;
  SchedulerStats stats_;
  RateWindow rate_;
  std::thread thread_;
};

}  // namespace anybit
