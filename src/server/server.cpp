#include "server/server.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <thread>

#include "core/error.h"
#include "server/sse.h"

namespace anybit::server {

HttpServer::HttpServer(Scheduler& sched, ModelInfo model, ServerOptions opts)
    : sched_(sched), model_(std::move(model)), opts_(std::move(opts)), svr_(std::make_unique<httplib::Server>()) {
  // Every running or queued request holds a worker thread (streams and waits
  // block), plus some for idle keep-alive connections and cheap routes, so that
  // a full queue is answered with 429 rather than left unread.
  const size_t workers = size_t(sched_.options().max_batch + sched_.options().max_queue) + 16;
  svr_->new_task_queue = [workers] { return new httplib::ThreadPool(workers); };
  svr_->set_payload_max_length(opts_.max_body_bytes);
  svr_->set_keep_alive_max_count(1000);
  svr_->set_keep_alive_timeout(5);
  svr_->set_read_timeout(30, 0);
  svr_->set_write_timeout(30, 0);
  routes();
}

HttpServer::~HttpServer() = default;

void HttpServer::reply_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  if (e.status == 429) res.set_header("Retry-After", "1");
  res.set_content(dump(error_body(e)), "application/json");
}

template <typename F>
void HttpServer::guarded(httplib::Response& res, F&& f) {
  try {
    f();
  } catch (const ApiError& e) {
    reply_error(res, e);
  } catch (const std::exception& e) {
    spdlog::error("request failed: {}", e.what());
    reply_error(res, ApiError(500, "server_error", e.what()));
  }
}

void HttpServer::handle_generate(const httplib::Request& req, httplib::Response& res, bool chat) {
  if (shutting_down_) throw ApiError(503, "server_error", "the server is shutting down", {}, "shutting_down");
  auto parsed = chat ? parse_chat_request(req.body, model_) : parse_completion_request(req.body, model_);
  auto sub = sched_.submit(parsed.params);
  switch (sub.status) {
    case SubmitStatus::Ok:
      break;
    case SubmitStatus::QueueFull:
      throw ApiError(429, "rate_limit_error", "the server is busy: " + sub.error + "; retry later", {},
                     "queue_full");
    case SubmitStatus::ShuttingDown:
      throw ApiError(503, "server_error", sub.error, {}, "shutting_down");
    case SubmitStatus::Invalid:
      throw invalid_request(sub.error, chat ? "messages" : "prompt");
  }
  auto request = sub.request;
  auto builder = std::make_shared<ResponseBuilder>(parsed, model_, request->id());
  if (parsed.stream) {
    ++open_streams_;
    stream_response(res, request, builder, [this](bool disconnected) {
      --open_streams_;
      if (!disconnected) return;
      std::lock_guard<std::mutex> lk(counters_mu_);
      ++counters_.disconnects;
    });
    return;
  }
  // The client of a plain request cannot be watched for disconnects (httplib
  // gives no access to the socket), so it runs to the end.
  RequestUpdate u;
  while (true) {
    if (!request->wait(u, std::chrono::seconds(1))) continue;
    builder->add(u);
    if (u.finished) break;
  }
  if (u.finish_reason == "cancelled")
    throw ApiError(503, "server_error", "the request was cancelled: the server is shutting down", {}, "cancelled");
  if (u.finish_reason == "error") throw ApiError(500, "server_error", "generation failed: " + u.error);
  res.set_content(dump(builder->final_response(u)), "application/json");
}

void HttpServer::routes() {
  auto& s = *svr_;
  s.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] { handle_generate(req, res, false); });
  });
  s.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] { handle_generate(req, res, true); });
  });
  auto model_json = [this] {
    return json{{"id", model_.id}, {"object", "model"}, {"created", model_.created}, {"owned_by", "anybit"},
                {"max_model_len", model_.max_context}};
  };
  s.Get("/v1/models", [model_json](const httplib::Request&, httplib::Response& res) {
    res.set_content(dump(json{{"object", "list"}, {"data", json::array({model_json()})}}), "application/json");
  });
  s.Get(R"(/v1/models/(.+))", [this, model_json](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] {
      if (req.matches[1] != model_.id)
        throw ApiError(404, "invalid_request_error", "The model '" + std::string(req.matches[1]) + "' does not exist",
                       "model", "model_not_found");
      res.set_content(dump(model_json()), "application/json");
    });
  });
  s.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (shutting_down_) {
      res.status = 503;
      res.set_content(R"({"status":"shutting down"})", "application/json");
    } else {
      res.set_content(R"({"status":"ok"})", "application/json");
    }
  });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    HttpCounters c;
    {
      std::lock_guard<std::mutex> lk(counters_mu_);
      c = counters_;
    }
    res.set_content(format_metrics(sched_.stats(), c, sched_.options().max_batch, sched_.options().max_queue),
                    "text/plain; version=0.0.4");
  });
  // Errors httplib produces itself (no route, body too large, bad request line)
  // get OpenAI's error shape too; responses that already have a body keep it.
  s.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    std::string msg = fmt::format("{} {}: the request failed with HTTP status {}", req.method, req.path, res.status);
    if (res.status == 400) msg = "the HTTP request is malformed";
    if (res.status == 404) msg = fmt::format("no route for {} {}", req.method, req.path);
    if (res.status == 413) msg = fmt::format("the request body is larger than {} bytes", opts_.max_body_bytes);
    reply_error(res, ApiError(res.status, res.status >= 500 ? "server_error" : "invalid_request_error", msg));
    return httplib::Server::HandlerResponse::Handled;
  }));
  s.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    std::lock_guard<std::mutex> lk(counters_mu_);
    ++counters_.requests;
    if (res.status >= 400 && res.status < 500) ++counters_.client_errors;
    if (res.status >= 500) ++counters_.server_errors;
    spdlog::debug("{} {} -> {}", req.method, req.path, res.status);
  });
}

int HttpServer::bind() {
  int port = opts_.port;
  if (port == 0) {
    port = svr_->bind_to_any_port(opts_.host);
    if (port < 0) fail("cannot listen on {}: no free port", opts_.host);
  } else if (!svr_->bind_to_port(opts_.host, port)) {
    fail("cannot listen on {}:{} (address in use or not available)", opts_.host, port);
  }
  return port;
}

void HttpServer::serve() { svr_->listen_after_bind(); }

void HttpServer::shutdown(std::chrono::milliseconds grace) {
  shutting_down_ = true;
  sched_.stop(grace);  // every request is now finished or cancelled, so handlers return
  // Streams must write their last event (the end, or the cancellation error)
  // before the listener stops: httplib ends chunked responses once it is stopping.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (open_streams_ > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  svr_->stop();
}

}  // namespace anybit::server
