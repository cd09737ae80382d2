// Single-sequence generation: prefill the prompt, then sample token by token,
// streaming text that never splits a UTF-8 character or shows a stop string.
#pragma once
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/engine.h"
#include "runtime/sampler.h"

namespace anybit {

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  SamplingParams sampling;
  std::vector<std::string> stop;  // generation ends before the first occurrence of any
  bool ignore_eos = false;
};

struct GenerateResult {
  std::vector<int32_t> ids;      // generated ids (without the prompt)
  std::string text;              // generated text, stop string excluded
  std::string finish_reason;     // "stop" (EOS or stop string) | "length"
  int64_t prompt_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
};

// on_text receives each newly safe piece of text; returning false cancels.
using TextCallback = std::function<bool(std::string_view)>;

GenerateResult generate(Engine& engine, const std::vector<int32_t>& prompt, const GenerateOptions& opts,
                        const TextCallback& on_text = nullptr);

// Holds back the tail of the text that could still become a stop string.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // Appends text; returns what can be emitted now. Sets stopped() once a stop string appears.
  std::string push(std::string_view piece);
  std::string flush();  // at the end: what was held back
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace anybit
