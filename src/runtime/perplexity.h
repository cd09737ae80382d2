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
};

PerplexityResult perplexity(Engine& engine, const std::vector<int32_t>& ids, int64_t ctx,
                            const std::function<void(int64_t done, int64_t total)>& progress = nullptr);

}  // namespace anybit
