// Server-sent events for stream: true. The HTTP worker thread that serves the
// stream waits on the request's channel and writes each update as an event; a
// failed write (the client went away) cancels the request, so the scheduler
// frees its KV blocks at its next step.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "runtime/scheduler.h"
#include "server/openai.h"

namespace httplib {
struct Response;
}

namespace anybit::server {

// One SSE event carrying `data`.
std::string sse_event(const std::string& data);

// Sets `res` up to stream the request's updates as OpenAI chunks, ending with
// "data: [DONE]". on_end(disconnected) runs once the response is over;
// disconnected = the client stopped reading before the last event.
void stream_response(httplib::Response& res, std::shared_ptr<Request> request,
                     std::shared_ptr<ResponseBuilder> builder, std::function<void(bool)> on_end);

}  // namespace anybit::server
