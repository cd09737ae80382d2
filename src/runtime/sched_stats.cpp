#include "runtime/sched_stats.h"

#include <algorithm>

namespace anybit {

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), per_bucket_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
  const size_t i = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  ++per_bucket_[i];
  ++count_;
  sum_ += v;
}

uint64_t Histogram::cumulative(size_t i) const {
  uint64_t c = 0;
  for (size_t j = 0; j <= i && j < per_bucket_.size(); ++j) c += per_bucket_[j];
  return c;
}

double Histogram::quantile(double q) const {
  if (count_ == 0) return 0;
  const double target = q * double(count_);
  uint64_t seen = 0;
  for (size_t i = 0; i < per_bucket_.size(); ++i) {
    if (per_bucket_[i] == 0) continue;
    if (double(seen + per_bucket_[i]) >= target) {
      if (i == bounds_.size()) return bounds_.empty() ? 0 : bounds_.back();
      const double lo = i == 0 ? 0 : bounds_[i - 1], hi = bounds_[i];
      return lo + (hi - lo) * std::clamp((target - double(seen)) / double(per_bucket_[i]), 0.0, 1.0);
    }
    seen += per_bucket_[i];
  }
  return bounds_.empty() ? 0 : bounds_.back();
}

std::vector<double> latency_buckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5,
          0.75,  1.0,    2.5,   5.0,  10.0,  20.0, 40.0,  80.0};
}

void RateWindow::add(double now, int64_t n) {
  samples_.emplace_back(now, n);
  while (!samples_.empty() && samples_.front().first < now - window_) samples_.pop_front();
}

double RateWindow::rate(double now) const {
  int64_t n = 0;
  for (const auto& [t, k] : samples_)
    if (t >= now - window_) n += k;
  return double(n) / window_;
}

}  // namespace anybit
