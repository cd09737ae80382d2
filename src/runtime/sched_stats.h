// Counters and latency histograms the scheduler keeps for /metrics. The engine
// thread writes them; readers get a copy (SchedulerStats) taken under a lock.
#pragma once
#include <cstddef>
#include <cstdint>
#include <deque>
#include <utility>
#include <vector>

namespace anybit {

// Cumulative histogram in Prometheus' sense: counts[i] = observations <= bounds[i].
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds = {});
  void observe(double v);
  const std::vector<double>& bounds() const { return bounds_; }
  // Observations <= bounds()[i] (cumulative), and the total count and sum.
  uint64_t cumulative(size_t i) const;
  uint64_t count() const { return count_; }
  double sum() const { return sum_; }
  // Value at quantile q (0..1), interpolated inside its bucket; 0 when empty.
  double quantile(double q) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> per_bucket_;  // one more than bounds_: the +Inf bucket
  uint64_t count_ = 0;
  double sum_ = 0;
};

// Bucket bounds in seconds suited to time-to-first-token / inter-token latency.
std::vector<double> latency_buckets();

// Generated tokens per second over a sliding window of recent steps.
class RateWindow {
 public:
  explicit RateWindow(double window_seconds = 10.0) : window_(window_seconds) {}
  void add(double now_seconds, int64_t n);
  double rate(double now_seconds) const;

 private:
  double window_;
  std::deque<std::pair<double, int64_t>> samples_;
};

struct SchedulerStats {
  int64_t waiting = 0;             // requests in the queue (incl. preempted ones)
  int64_t running = 0;             // sequences in the running batch
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_free = 0;
  int64_t kv_block_size = 0;
  uint64_t requests_submitted = 0;
  uint64_t requests_rejected = 0;  // queue full
  uint64_t requests_finished = 0;  // stop or length
  uint64_t requests_cancelled = 0;
  uint64_t requests_failed = 0;
  uint64_t prompt_tokens = 0;      // prompt tokens of finished requests
  uint64_t generated_tokens = 0;
  uint64_t computed_tokens = 0;    // tokens run through the model (recomputation included)
  uint64_t prefix_hit_tokens = 0;  // prompt tokens served from shared blocks
  uint64_t preemptions = 0;
  uint64_t steps = 0;
  double tokens_per_second = 0;    // generated tokens over the last 10 s
  Histogram ttft{latency_buckets()};
  Histogram itl{latency_buckets()};
};

}  // namespace anybit
