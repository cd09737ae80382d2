// Turns a row of logits into the next token: greedy, or temperature sampling
// filtered by top-k, top-p (nucleus) and min-p, with a repetition penalty.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace anybit {

struct SamplingParams {
  float temperature = 0.0f;        // 0 = greedy
  int32_t top_k = 0;               // 0 = off
  float top_p = 1.0f;              // 1 = off
  float min_p = 0.0f;              // 0 = off; keep tokens with p >= min_p * p_max
  float repetition_penalty = 1.0f; // 1 = off (CTRL-style: divide positive logits, multiply negative)
  int32_t repeat_last_n = 64;      // window the penalty looks at (-1 = whole history)
  uint64_t seed = 0;
  // The client chose the seed (so it expects the same tokens however requests are batched):
  // the scheduler then samples it on the host, never on the device.
  bool seeded = false;

  void validate() const;  // throws anybit::Error on out-of-range values
};

// One row's sampling request for a backend that samples where its logits are
// (ModelBackend::sample_last): the filters, the distinct ids the repetition penalty applies
// to, and a uniform draw in [0, 1) from the sequence's Sampler.
struct SampleRequest {
  const SamplingParams* params = nullptr;
  std::vector<int32_t> penalty_ids;
  double u = 0.0;
};

struct TokenProb {
  int32_t id;
  float logprob;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  // `history`: the prompt and generated ids so far (for the repetition penalty).
  int32_t sample(const float* logits, int64_t vocab, const std::vector<int32_t>& history);
  const SamplingParams& params() const { return p_; }
  // The request for a device-side sampler: draws one uniform from this sampler's generator.
  SampleRequest request(const std::vector<int32_t>& history, int64_t vocab);
  // The distinct ids in the penalty window (empty when the penalty is off).
  std::vector<int32_t> penalty_ids(const std::vector<int32_t>& history, int64_t vocab) const;

  // Log-probabilities (of the unmodified distribution) of the `n` most likely tokens.
  static std::vector<TokenProb> top_logprobs(const float* logits, int64_t vocab, int n);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<float> work_;
  std::vector<int32_t> idx_;
};

int32_t argmax(const float* x, int64_t n);

}  // namespace anybit
