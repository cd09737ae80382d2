// The OpenAI-compatible HTTP server (cpp-httplib): routes, error handling and
// the life cycle. Handlers run on httplib's worker threads and talk to the
// scheduler's engine thread only through submit() and per-request channels.
#pragma once
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include "runtime/scheduler.h"
#include "server/metrics.h"
#include "server/openai.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace anybit::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                  // 0 = any free port
  size_t max_body_bytes = 16 << 20;
};

class HttpServer {
 public:
  HttpServer(Scheduler& sched, ModelInfo model, ServerOptions opts);
  ~HttpServer();

  // Binds the listening socket; returns the port. Throws anybit::Error on failure.
  int bind();
  // Serves until shutdown() (blocks).
  void serve();
  // Callable from any thread (e.g. a signal watcher): refuses new generation
  // requests, lets in-flight ones finish within `grace`, cancels the rest, then
  // stops the listener so that serve() returns.
  void shutdown(std::chrono::milliseconds grace);

 private:
  void routes();
  void handle_generate(const httplib::Request& req, httplib::Response& res, bool chat);
  void reply_error(httplib::Response& res, const ApiError& e);
  // Runs a handler, turning ApiError and other exceptions into OpenAI-shaped errors.
  template <typename F>
  void guarded(httplib::Response& res, F&& f);

  Scheduler& sched_;
  ModelInfo model_;
  ServerOptions opts_;
  std::unique_ptr<httplib::Server> svr_;
  std::atomic<bool> shutting_down_{false};
  std::atomic<int> open_streams_{0};  // streams that have not written their last event
  std::mutex counters_mu_;
  HttpCounters counters_;
};

}  // namespace anybit::server
