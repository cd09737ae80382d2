#include "server/sse.h"

#include <httplib.h>

namespace anybit::server {

std::string sse_event(const std::string& data) { return "data: " + data + "\n\n"; }

void stream_response(httplib::Response& res, std::shared_ptr<Request> request,
                     std::shared_ptr<ResponseBuilder> builder, std::function<void(bool)> on_end) {
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  auto finished = std::make_shared<bool>(false);
  res.set_chunked_content_provider(
      "text/event-stream",
      [request, builder, finished](size_t, httplib::DataSink& sink) {
        RequestUpdate u;
        if (!request->wait(u, std::chrono::seconds(1))) {
          // Nothing new (queued, or a long prefill): an SSE comment. Writing is the
          // only way to notice a client that has gone; the second write after it
          // closed fails.
          static const char kHeartbeat[] = ": keep-alive\n\n";
          return sink.write(kHeartbeat, sizeof(kHeartbeat) - 1);
        }
        std::string out;
        if (u.finished && (u.finish_reason == "cancelled" || u.finish_reason == "error")) {
          // OpenAI's clients raise an APIError for an event that carries "error".
          const ApiError e = u.finish_reason == "cancelled"
                                 ? ApiError(503, "server_error", "the request was cancelled: the server is shutting down",
                                            {}, "cancelled")
                                 : ApiError(500, "server_error", "generation failed: " + u.error);
          out = sse_event(dump(error_body(e)));
        } else {
          for (const auto& c : builder->stream_chunks(u)) out += sse_event(dump(c));
          if (u.finished) {
            if (builder->include_usage()) out += sse_event(dump(builder->usage_chunk(u)));
            out += sse_event("[DONE]");
          }
        }
        if (!out.empty() && !sink.write(out.data(), out.size())) return false;
        if (u.finished) {
          *finished = true;
          sink.done();
        }
        return true;
      },
      [request, finished, on_end, ended = std::make_shared<bool>(false)](bool) {
        // Runs from the Response's destructor, however the response ended (and
        // httplib's Response is copyable: run once). Cancel is a no-op for finished requests.
        if (*ended) return;
        *ended = true;
        request->cancel();
        if (on_end) on_end(!*finished);
      });
}

}  // namespace anybit::server
