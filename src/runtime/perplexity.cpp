#include "runtime/perplexity.h"

#include <cmath>

#include "core/error.h"

namespace anybit {

namespace {

// Logits of one window (the sequence's cache released whatever happens).
void run_window(Engine& e, const int32_t* ids, int64_t len, ForwardOutput& out) {
  SequenceKV seq;
  try {
    e.model().forward({BatchEntry{&seq, ids, len, true}}, e.kv(), out);
  } catch (...) {
    e.kv().release(seq);
    throw;
  }
  e.kv().release(seq);
}

// log-sum-exp of a row of logits.
double row_lse(const float* row, int64_t n) {
  float mx = row[0];
  for (int64_t v = 1; v < n; ++v) mx = std::max(mx, row[v]);
  double sum = 0.0;
  for (int64_t v = 0; v < n; ++v) sum += std::exp(double(row[v] - mx));
  return double(mx) + std::log(sum);
}

}  // namespace

PerplexityResult perplexity(Engine& engine, const std::vector<int32_t>& ids, int64_t ctx,
                            const std::function<void(int64_t, int64_t)>& progress, Engine* reference) {
  if (ctx < 2) fail("--ctx must be at least 2 (got {})", ctx);
  if (ctx > engine.max_context()) fail("--ctx {} exceeds the context of {}", ctx, engine.max_context());
  const int64_t n = int64_t(ids.size());
  if (n < 2) fail("perplexity needs at least 2 tokens of text (got {})", n);
  PerplexityResult r;
  double nll = 0.0;
  const int64_t total_windows = (n - 1 + ctx - 1) / ctx;
  if (reference && ctx > reference->max_context())
    fail("--ctx {} exceeds the reference model's context of {}", ctx, reference->max_context());
  ForwardOutput out, ref;
  double ref_nll = 0.0, kl = 0.0;
  int64_t agree = 0;
  for (int64_t s = 0; s < n - 1; s += ctx) {
    const int64_t len = std::min(ctx, n - 1 - s);
    run_window(engine, ids.data() + s, len, out);
    if (reference) {
      run_window(*reference, ids.data() + s, len, ref);
      if (ref.vocab != out.vocab)
        fail("the reference model's vocabulary ({}) differs from the model's ({})", ref.vocab, out.vocab);
    }
    for (int64_t i = 0; i < len; ++i) {
      const float* row = out.row(0, i);
      const double lse = row_lse(row, out.vocab);
      nll += lse - double(row[ids[size_t(s + i + 1)]]);
      if (!reference) continue;
      const float* rr = ref.row(0, i);
      const double rlse = row_lse(rr, ref.vocab);
      ref_nll += rlse - double(rr[ids[size_t(s + i + 1)]]);
      double k = 0.0;
      int64_t am = 0, ar = 0;
      for (int64_t v = 0; v < out.vocab; ++v) {
        const double lr = double(rr[v]) - rlse;
        k += std::exp(lr) * (lr - (double(row[v]) - lse));
        if (row[v] > row[am]) am = v;
        if (rr[v] > rr[ar]) ar = v;
      }
      kl += k;
      agree += am == ar;
    }
    r.scored_tokens += len;
    ++r.windows;
    if (progress) progress(r.windows, total_windows);
  }
  if (reference) {
    r.has_reference = true;
    r.ref_ppl = std::exp(ref_nll / double(r.scored_tokens));
    r.mean_kl = kl / double(r.scored_tokens);
    r.top1_agree = double(agree) / double(r.scored_tokens);
  }
  r.mean_nll = nll / double(r.scored_tokens);
  r.ppl = std::exp(r.mean_nll);
  return r;
}

}  // namespace anybit
