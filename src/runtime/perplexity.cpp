#include "runtime/perplexity.h"

#include <cmath>

#include "core/error.h"

namespace anybit {

PerplexityResult perplexity(Engine& engine, const std::vector<int32_t>& ids, int64_t ctx,
                            const std::function<void(int64_t, int64_t)>& progress) {
  if (ctx < 2) fail("--ctx must be at least 2 (got {})", ctx);
  if (ctx > engine.max_context()) fail("--ctx {} exceeds the context of {}", ctx, engine.max_context());
  const int64_t n = int64_t(ids.size());
  if (n < 2) fail("perplexity needs at least 2 tokens of text (got {})", n);
  PerplexityResult r;
  double nll = 0.0;
  const int64_t total_windows = (n - 1 + ctx - 1) / ctx;
  ForwardOutput out;
  for (int64_t s = 0; s < n - 1; s += ctx) {
    const int64_t len = std::min(ctx, n - 1 - s);
    SequenceKV seq;
    try {
      engine.model().forward({BatchEntry{&seq, ids.data() + s, len, true}}, engine.kv(), out);
    } catch (...) {
      engine.kv().release(seq);
      throw;
    }
    engine.kv().release(seq);
    for (int64_t i = 0; i < len; ++i) {
      const float* row = out.row(0, i);
      float mx = row[0];
      for (int64_t v = 1; v < out.vocab; ++v) mx = std::max(mx, row[v]);
      double sum = 0.0;
      for (int64_t v = 0; v < out.vocab; ++v) sum += std::exp(double(row[v] - mx));
      nll += double(mx) + std::log(sum) - double(row[ids[size_t(s + i + 1)]]);
    }
    r.scored_tokens += len;
    ++r.windows;
    if (progress) progress(r.windows, total_windows);
  }
  r.mean_nll = nll / double(r.scored_tokens);
  r.ppl = std::exp(r.mean_nll);
  return r;
}

}  // namespace anybit
