// The OpenAI API's JSON: parsing and validating /v1/completions and
// /v1/chat/completions bodies into scheduler requests, and formatting responses,
// stream chunks and errors in OpenAI's shapes.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "runtime/scheduler.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace anybit::server {

using json = nlohmann::json;

// An error the client caused (or the server's state, e.g. 429/503), returned as
// {"error": {"message", "type", "param", "code"}}.
struct ApiError : std::runtime_error {
  ApiError(int status, std::string type, std::string message, std::string param = {}, std::string code = {})
      : std::runtime_error(message), status(status), type(std::move(type)), param(std::move(param)),
        code(std::move(code)) {}
  int status;
  std::string type, param, code;
};

ApiError invalid_request(const std::string& message, const std::string& param = {}, const std::string& code = {});
json error_body(const ApiError& e);

// What every handler needs to know about the served model.
struct ModelInfo {
  std::string id;          // the name clients pass as "model"
  int64_t created = 0;     // unix time the server started
  int64_t max_context = 0;
  const Tokenizer* tokenizer = nullptr;
  const ChatTemplate* chat_template = nullptr;
};

struct ParsedRequest {
  bool chat = false;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;
  RequestParams params;
};

// Throw ApiError (400 for malformed/invalid values, 404 for an unknown model).
ParsedRequest parse_completion_request(const std::string& body, const ModelInfo& m);
ParsedRequest parse_chat_request(const std::string& body, const ModelInfo& m);

// Builds the response of one request piece by piece, for either endpoint.
class ResponseBuilder {
 public:
  ResponseBuilder(const ParsedRequest& req, const ModelInfo& m, uint64_t request_id);

  void add(const RequestUpdate& u);  // accumulate (non-streaming)
  json final_response(const RequestUpdate& last) const;

  // Streaming: the chunks for one update (possibly none), the usage chunk.
  std::vector<json> stream_chunks(const RequestUpdate& u);
  json usage_chunk(const RequestUpdate& last) const;
  bool include_usage() const { return req_.include_usage; }

 private:
  json logprobs_of(const std::vector<TokenOut>& tokens, int64_t& text_offset) const;
  json chunk_base() const;
  json usage(const RequestUpdate& u) const;
  void append_logprobs(json& into, const json& more) const;

  ParsedRequest req_;
  const ModelInfo& m_;
  std::string id_;
  int64_t created_;
  std::string text_;
  json logprobs_;  // accumulated (non-streaming)
  int64_t text_offset_ = 0;
  bool sent_role_ = false;
};

// OpenAI's finish_reason for ours; cancellation and failure are reported as errors instead.
std::string api_finish_reason(const std::string& reason);

// JSON text with invalid UTF-8 replaced (token pieces can split characters).
std::string dump(const json& j);

}  // namespace anybit::server
