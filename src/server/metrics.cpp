#include "server/metrics.h"

#include <fmt/format.h>
#include <unistd.h>

#include <fstream>

namespace anybit::server {

namespace {

void metric(std::string& out, const char* name, const char* type, const char* help, double value) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, value);
}

void histogram(std::string& out, const char* name, const char* help, const Histogram& h) {
  out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  for (size_t i = 0; i < h.bounds().size(); ++i)
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, h.bounds()[i], h.cumulative(i));
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, h.count(), name, h.sum(), name,
                     h.count());
}

}  // namespace

uint64_t resident_memory_bytes() {
  std::ifstream f("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  if (!(f >> size >> resident)) return 0;
  return resident * uint64_t(sysconf(_SC_PAGESIZE));
}

std::string format_metrics(const SchedulerStats& s, const HttpCounters& http, int64_t max_batch, int64_t max_queue) {
  std::string o;
  metric(o, "anybit_requests_waiting", "gauge", "Requests in the queue, preempted ones included.", double(s.waiting));
  metric(o, "anybit_requests_running", "gauge", "Sequences in the running batch.", double(s.running));
  metric(o, "anybit_max_batch", "gauge", "Most sequences in the running batch.", double(max_batch));
  metric(o, "anybit_max_queue", "gauge", "Most requests waiting; more get 429.", double(max_queue));
  metric(o, "anybit_kv_blocks_total", "gauge", "KV cache blocks.", double(s.kv_blocks_total));
  metric(o, "anybit_kv_blocks_free", "gauge", "KV cache blocks free.", double(s.kv_blocks_free));
  metric(o, "anybit_kv_blocks_used", "gauge", "KV cache blocks in use.", double(s.kv_blocks_total - s.kv_blocks_free));
  metric(o, "anybit_kv_block_size", "gauge", "Token positions per KV block.", double(s.kv_block_size));
  metric(o, "anybit_tokens_per_second", "gauge", "Generated tokens per second over the last 10 s.", s.tokens_per_second);
  metric(o, "anybit_requests_submitted_total", "counter", "Requests accepted into the queue.", double(s.requests_submitted));
  metric(o, "anybit_requests_rejected_total", "counter", "Requests refused because the queue was full.",
         double(s.requests_rejected));
  metric(o, "anybit_requests_finished_total", "counter", "Requests that ended with stop or length.",
         double(s.requests_finished));
  metric(o, "anybit_requests_cancelled_total", "counter", "Requests cancelled (client gone or shutdown).",
         double(s.requests_cancelled));
  metric(o, "anybit_requests_failed_total", "counter", "Requests that failed in the engine.", double(s.requests_failed));
  metric(o, "anybit_prompt_tokens_total", "counter", "Prompt tokens of ended requests.", double(s.prompt_tokens));
  metric(o, "anybit_generation_tokens_total", "counter", "Generated tokens.", double(s.generated_tokens));
  metric(o, "anybit_computed_tokens_total", "counter", "Tokens run through the model, recomputation included.",
         double(s.computed_tokens));
  metric(o, "anybit_prefix_cache_hit_tokens_total", "counter", "Prompt tokens taken from shared KV blocks.",
         double(s.prefix_hit_tokens));
  metric(o, "anybit_preemptions_total", "counter", "Sequences preempted for lack of KV blocks.", double(s.preemptions));
  metric(o, "anybit_steps_total", "counter", "Batched forward passes.", double(s.steps));
  histogram(o, "anybit_time_to_first_token_seconds", "Time from arrival to the first generated token.", s.ttft);
  histogram(o, "anybit_inter_token_latency_seconds", "Time between consecutive tokens of a request.", s.itl);
  metric(o, "anybit_http_requests_total", "counter", "HTTP requests answered.", double(http.requests));
  metric(o, "anybit_http_client_errors_total", "counter", "HTTP 4xx responses.", double(http.client_errors));
  metric(o, "anybit_http_server_errors_total", "counter", "HTTP 5xx responses.", double(http.server_errors));
  metric(o, "anybit_stream_disconnects_total", "counter", "Streams whose client went away before the end.",
         double(http.disconnects));
  metric(o, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", double(resident_memory_bytes()));
  return o;
}

}  // namespace anybit::server
