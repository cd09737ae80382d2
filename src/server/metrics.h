// /metrics in Prometheus' text exposition format (version 0.0.4).
#pragma once
#include <string>

#include "runtime/sched_stats.h"

namespace anybit::server {

struct HttpCounters {
  uint64_t requests = 0;        // HTTP requests answered
  uint64_t client_errors = 0;   // 4xx
  uint64_t server_errors = 0;   // 5xx
  uint64_t disconnects = 0;     // streams whose client went away
};

std::string format_metrics(const SchedulerStats& s, const HttpCounters& http, int64_t max_batch, int64_t max_queue);

// Resident set size of this process in bytes (0 where /proc is unavailable).
uint64_t resident_memory_bytes();

}  // namespace anybit::server
