// Perplexity over a token stream: non-overlapping windows of `ctx` tokens; window j
// feeds tokens [ctx*j, ctx*j+ctx) and scores each next token [ctx*j+1, ctx*j+ctx+1).
#pragma once
#include <functional>
#include <vector>

#include "runtime/engine.h"

namespace anybit {

struct PerplexityResult {
  double ppl = 0;
  double mean_nll = 0;
  int64_t scored_tokens = 0;
  int64_t windows = 0;
  // With a reference model (llama.cpp's --kl-divergence idea): how far this model's
  // next-token distributions are from the reference's on the same windows.
  bool has_reference = false;
  double ref_ppl = 0;
  double mean_kl = 0;     // mean over tokens of KL(reference || model), nats
  double top1_agree = 0;  // fraction of tokens where both models' argmax agree
};

// `reference`, when given, runs the same windows (same token ids; its vocabulary must
// match) and fills the reference fields.
PerplexityResult perplexity(Engine& engine, const std::vector<int32_t>& ids, int64_t ctx,
                            const std::function<void(int64_t done, int64_t total)>& progress = nullptr,
                            Engine* reference = nullptr);

}  // namespace anybit
