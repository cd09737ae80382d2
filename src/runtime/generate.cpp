#include "runtime/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace anybit {

std::string StopMatcher::push(std::string_view piece) {
  if (stopped_) return "";
  held_.append(piece);
  size_t cut = std::string::npos;
  for (const auto& s : stops_) {
    if (s.empty()) continue;
    const size_t at = held_.find(s);
    if (at != std::string::npos) cut = std::min(cut, at);
  }
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, cut);
    held_.clear();
    return out;
  }
  // Keep the longest suffix that is a proper prefix of some stop string.
  size_t keep = 0;
  for (const auto& s : stops_)
    for (size_t n = std::min(s.size() - (s.empty() ? 0 : 1), held_.size()); n > keep; --n)
      if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopMatcher::flush() {
  std::string out = stopped_ ? "" : held_;
  held_.clear();
  return out;
}

GenerateResult generate(Engine& engine, const std::vector<int32_t>& prompt, const GenerateOptions& opts,
                        const TextCallback& on_text) {
  using clock = std::chrono::steady_clock;
  if (prompt.empty()) fail("the prompt is empty (no tokens to start from)");
  if (int64_t(prompt.size()) >= engine.max_context())
    fail("the prompt has {} tokens, the context holds {}", prompt.size(), engine.max_context());
  GenerateResult r;
  r.prompt_tokens = int64_t(prompt.size());
  const int64_t budget = std::min<int64_t>(opts.max_new_tokens, engine.max_context() - int64_t(prompt.size()));

  Sampler sampler(opts.sampling);
  StreamDecoder text(engine.tokenizer());
  StopMatcher stops(opts.stop);
  const auto& eos = engine.config().eos_ids;
  std::vector<int32_t> history = prompt;
  SequenceKV seq;
  ForwardOutput out;
  bool cancelled = false;
  auto emit = [&](const std::string& s) {
    if (s.empty()) return;
    r.text += s;
    if (on_text && !on_text(s)) cancelled = true;
  };

  try {
    auto t0 = clock::now();
    engine.model().forward({BatchEntry{&seq, prompt.data(), int64_t(prompt.size()), false}}, engine.kv(), out);
    r.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();
    t0 = clock::now();
    r.finish_reason = "length";
    for (int64_t i = 0; i < budget; ++i) {
      // One row: the host sampler is faster than one GPU block (docs/PERFORMANCE.md); the
      // device sampler pays off from two rows on (the scheduler uses it there).
      const int32_t id = sampler.sample(out.row(0), out.vocab, history);
      if (!opts.ignore_eos && std::find(eos.begin(), eos.end(), id) != eos.end()) {
        r.finish_reason = "stop";
        break;
      }
      r.ids.push_back(id);
      history.push_back(id);
      emit(stops.push(text.push(id)));
      if (stops.stopped()) {
        r.finish_reason = "stop";
        break;
      }
      if (cancelled || i + 1 == budget) break;
      engine.model().forward({BatchEntry{&seq, &id, 1, false}}, engine.kv(), out);
    }
    if (!stops.stopped()) emit(stops.push(text.flush()) + stops.flush());
    r.decode_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  } catch (...) {
    engine.kv().release(seq);
    throw;
  }
  engine.kv().release(seq);
  return r;
}

}  // namespace anybit
