#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_set>

#include "core/error.h"

namespace anybit {

void SamplingParams::validate() const {
  if (!(temperature >= 0.0f) || temperature > 100.0f) fail("temperature must be in [0, 100] (got {})", temperature);
  if (top_k < 0) fail("top_k must be >= 0 (got {})", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f)) fail("top_p must be in (0, 1] (got {})", top_p);
  if (!(min_p >= 0.0f && min_p <= 1.0f)) fail("min_p must be in [0, 1] (got {})", min_p);
  if (!(repetition_penalty > 0.0f)) fail("repetition_penalty must be > 0 (got {})", repetition_penalty);
}

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return int32_t(best);
}

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) { p_.validate(); }

int32_t Sampler::sample(const float* logits, int64_t vocab, const std::vector<int32_t>& history) {
  work_.assign(logits, logits + vocab);
  for (int32_t id : penalty_ids(history, vocab)) {
    float& l = work_[size_t(id)];
    l = l > 0 ? l / p_.repetition_penalty : l * p_.repetition_penalty;
  }
  if (p_.temperature == 0.0f) return argmax(work_.data(), vocab);

  // Candidates sorted by logit; top-k first since it bounds the sort.
  idx_.resize(size_t(vocab));
  std::iota(idx_.begin(), idx_.end(), 0);
  size_t k = (p_.top_k > 0 && p_.top_k < vocab) ? size_t(p_.top_k) : size_t(vocab);
  auto by_logit = [&](int32_t a, int32_t b) { return work_[size_t(a)] > work_[size_t(b)]; };
  std::partial_sort(idx_.begin(), idx_.begin() + long(k), idx_.end(), by_logit);
  idx_.resize(k);

  const float inv_t = 1.0f / p_.temperature;
  const float mx = work_[size_t(idx_[0])];
  std::vector<double> prob(k);
  double sum = 0.0;
  for (size_t i = 0; i < k; ++i) sum += prob[i] = std::exp(double((work_[size_t(idx_[i])] - mx) * inv_t));
  for (auto& p : prob) p /= sum;

  size_t keep = k;
  if (p_.min_p > 0.0f) {
    const double floor = double(p_.min_p) * prob[0];
    while (keep > 1 && prob[keep - 1] < floor) --keep;
  }
  if (p_.top_p < 1.0f) {
    double cum = 0.0;
    for (size_t i = 0; i < keep; ++i) {
      cum += prob[i];
      if (cum >= double(p_.top_p)) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0.0;
  for (size_t i = 0; i < keep; ++i) kept += prob[i];
  std::uniform_real_distribution<double> u(0.0, kept);
  double r = u(rng_);
  for (size_t i = 0; i < keep; ++i) {
    r -= prob[i];
    if (r <= 0.0) return idx_[i];
  }
  return idx_[keep - 1];
}

std::vector<int32_t> Sampler::penalty_ids(const std::vector<int32_t>& history, int64_t vocab) const {
  std::vector<int32_t> ids;
  if (p_.repetition_penalty == 1.0f || history.empty()) return ids;
  const size_t n = p_.repeat_last_n < 0 ? history.size() : std::min(history.size(), size_t(p_.repeat_last_n));
  std::unordered_set<int32_t> seen;
  for (auto it = history.end() - long(n); it != history.end(); ++it)
    if (*it >= 0 && *it < vocab && seen.insert(*it).second) ids.push_back(*it);
  return ids;
}

SampleRequest Sampler::request(const std::vector<int32_t>& history, int64_t vocab) {
  SampleRequest r;
  r.params = &p_;
  r.penalty_ids = penalty_ids(history, vocab);
  r.u = std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
  return r;
}

std::vector<TokenProb> Sampler::top_logprobs(const float* logits, int64_t vocab, int n) {
  const float mx = logits[argmax(logits, vocab)];
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(double(logits[i] - mx));
  const double lse = double(mx) + std::log(sum);
  std::vector<int32_t> idx(static_cast<size_t>(vocab));
  std::iota(idx.begin(), idx.end(), 0);
  const size_t k = std::min<size_t>(size_t(std::max(n, 0)), size_t(vocab));
  std::partial_sort(idx.begin(), idx.begin() + long(k), idx.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  std::vector<TokenProb> out;
  for (size_t i = 0; i < k; ++i) out.push_back({idx[i], float(double(logits[idx[i]]) - lse)});
  return out;
}

}  // namespace anybit
