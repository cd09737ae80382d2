#include "server/openai.h"

#include <chrono>
#include <fmt/format.h>
#include <random>

#include "core/error.h"

namespace anybit::server {

ApiError invalid_request(const std::string& message, const std::string& param, const std::string& code) {
  return ApiError(400, "invalid_request_error", message, param, code);
}

json error_body(const ApiError& e) {
  return json{{"error",
               {{"message", e.what()},
                {"type", e.type},
                {"param", e.param.empty() ? json(nullptr) : json(e.param)},
                {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

namespace {

// nlohmann's parser handles depth iteratively, but the values it builds are
// walked recursively later; refuse absurd nesting before parsing at all.
void check_nesting(const std::string& body) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : body) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > 64) throw invalid_request("the JSON body is nested more than 64 levels deep");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

json parse_body(const std::string& body) {
  check_nesting(body);
  json j;
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    throw invalid_request(fmt::format("the request body is not valid JSON: {}", e.what()));
  }
  if (!j.is_object()) throw invalid_request("the request body must be a JSON object");
  return j;
}

const json* field(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string type_name(const json& v) { return v.type_name(); }

double get_number(const json& j, const char* name, double def, double lo, double hi) {
  const json* v = field(j, name);
  if (!v) return def;
  if (!v->is_number())
    throw invalid_request(fmt::format("'{}' must be a number, not {}", name, type_name(*v)), name, "invalid_type");
  const double x = v->get<double>();
  if (!(x >= lo && x <= hi))
    throw invalid_request(fmt::format("'{}' must be between {} and {} (got {})", name, lo, hi, x), name,
                          "invalid_value");
  return x;
}

int64_t get_int(const json& j, const char* name, int64_t def, int64_t lo, int64_t hi) {
  const json* v = field(j, name);
  if (!v) return def;
  if (!v->is_number_integer()) {
    // 16.0 is an integer too, as far as JSON goes.
    if (v->is_number_float() && v->get<double>() == double(int64_t(v->get<double>())) &&
        std::abs(v->get<double>()) < 9e15)
      return get_int(json{{name, int64_t(v->get<double>())}}, name, def, lo, hi);
    throw invalid_request(fmt::format("'{}' must be an integer, not {}", name, type_name(*v)), name, "invalid_type");
  }
  const int64_t x = v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX) ? INT64_MAX : v->get<int64_t>();
  if (x < lo || x > hi)
    throw invalid_request(fmt::format("'{}' must be between {} and {} (got {})", name, lo, hi, x), name,
                          "invalid_value");
  return x;
}

bool get_bool(const json& j, const char* name, bool def) {
  const json* v = field(j, name);
  if (!v) return def;
  if (!v->is_boolean())
    throw invalid_request(fmt::format("'{}' must be a boolean, not {}", name, type_name(*v)), name, "invalid_type");
  return v->get<bool>();
}

void check_model(const json& j, const ModelInfo& m) {
  const json* v = field(j, "model");
  if (!v) return;  // the one served model
  if (!v->is_string())
    throw invalid_request(fmt::format("'model' must be a string, not {}", type_name(*v)), "model", "invalid_type");
  if (v->get<std::string>() != m.id)
    throw ApiError(404, "invalid_request_error",
                   fmt::format("The model '{}' does not exist (this server serves '{}')", v->get<std::string>(), m.id),
                   "model", "model_not_found");
}

std::vector<std::string> get_stop(const json& j) {
  const json* v = field(j, "stop");
  std::vector<std::string> out;
  if (!v) return out;
  if (v->is_string()) {
    out.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    if (v->size() > 4) throw invalid_request("'stop' can hold at most 4 strings", "stop", "invalid_value");
    for (const auto& s : *v) {
      if (!s.is_string()) throw invalid_request("'stop' must be a string or an array of strings", "stop", "invalid_type");
      out.push_back(s.get<std::string>());
    }
  } else {
    throw invalid_request("'stop' must be a string or an array of strings", "stop", "invalid_type");
  }
  for (const auto& s : out)
    if (s.empty()) throw invalid_request("stop strings must not be empty", "stop", "invalid_value");
  return out;
}

// Parameters we do not implement are refused unless they are at their no-op value.
void refuse_unsupported(const json& j) {
  if (get_int(j, "n", 1, 1, 128) != 1) throw invalid_request("only n = 1 is supported", "n", "unsupported_value");
  if (get_int(j, "best_of", 1, 1, 128) != 1)
    throw invalid_request("only best_of = 1 is supported", "best_of", "unsupported_value");
  if (get_bool(j, "echo", false)) throw invalid_request("echo is not supported", "echo", "unsupported_value");
  for (const char* pen : {"presence_penalty", "frequency_penalty"})
    if (get_number(j, pen, 0.0, -2.0, 2.0) != 0.0)
      throw invalid_request(fmt::format("'{}' is not supported (use repetition_penalty)", pen), pen,
                            "unsupported_value");
  if (const json* lb = field(j, "logit_bias"); lb && !(lb->is_object() && lb->empty()))
    throw invalid_request("logit_bias is not supported", "logit_bias", "unsupported_value");
  if (const json* t = field(j, "tools"); t && !(t->is_array() && t->empty()))
    throw invalid_request("tools are not supported", "tools", "unsupported_value");
  if (const json* sfx = field(j, "suffix"); sfx && !(sfx->is_string() && sfx->get<std::string>().empty()))
    throw invalid_request("suffix is not supported", "suffix", "unsupported_value");
}

void parse_common(const json& j, const ModelInfo& m, ParsedRequest& r) {
  check_model(j, m);
  refuse_unsupported(j);
  r.stream = get_bool(j, "stream", false);
  if (const json* so = field(j, "stream_options")) {
    if (!so->is_object()) throw invalid_request("'stream_options' must be an object", "stream_options", "invalid_type");
    if (!r.stream) throw invalid_request("'stream_options' is only allowed with stream: true", "stream_options");
    r.include_usage = get_bool(*so, "include_usage", false);
  }
  SamplingParams& s = r.params.sampling;
  s.temperature = float(get_number(j, "temperature", 1.0, 0.0, 2.0));
  s.top_p = float(get_number(j, "top_p", 1.0, 0.0, 1.0));
  if (s.top_p <= 0.0f) throw invalid_request("'top_p' must be greater than 0", "top_p", "invalid_value");
  s.top_k = int32_t(get_int(j, "top_k", 0, 0, 1 << 30));
  s.min_p = float(get_number(j, "min_p", 0.0, 0.0, 1.0));
  s.repetition_penalty = float(get_number(j, "repetition_penalty", 1.0, 0.01, 100.0));
  if (field(j, "seed")) {
    s.seed = uint64_t(get_int(j, "seed", 0, INT64_MIN, INT64_MAX));
    s.seeded = true;
  } else {
    std::random_device rd;
    s.seed = (uint64_t(rd()) << 32) ^ rd();
  }
  r.params.stop = get_stop(j);
  r.params.ignore_eos = get_bool(j, "ignore_eos", false);
}

// max_tokens must leave the prompt inside the context, as OpenAI's API checks.
void set_max_tokens(const json& j, const ModelInfo& m, ParsedRequest& r, int64_t def) {
  const int64_t n_prompt = int64_t(r.params.prompt.size());
  if (n_prompt == 0) throw invalid_request("the prompt is empty", r.chat ? "messages" : "prompt");
  if (n_prompt >= m.max_context)
    throw invalid_request(fmt::format("This model's maximum context length is {} tokens, but the prompt has {} "
                                      "tokens (leaving no room for the completion)", m.max_context, n_prompt),
                          r.chat ? "messages" : "prompt", "context_length_exceeded");
  const char* name = "max_tokens";
  if (r.chat && field(j, "max_completion_tokens")) name = "max_completion_tokens";
  const int64_t max = get_int(j, name, -1, 1, INT64_MAX);
  if (max > 0 && n_prompt + max > m.max_context)
    throw invalid_request(fmt::format("This model's maximum context length is {} tokens, but {} tokens were "
                                      "requested ({} in the prompt, {} for the completion)", m.max_context,
                                      n_prompt + max, n_prompt, max), name, "context_length_exceeded");
  r.params.max_tokens = max > 0 ? max : std::min(def, m.max_context - n_prompt);
}

std::vector<int32_t> token_array(const json& a, int64_t vocab) {
  std::vector<int32_t> ids;
  for (const auto& t : a) {
    if (!t.is_number_integer()) throw invalid_request("a token prompt must hold integers only", "prompt", "invalid_type");
    const int64_t id = t.get<int64_t>();
    if (id < 0 || id >= vocab)
      throw invalid_request(fmt::format("token id {} is outside the vocabulary (size {})", id, vocab), "prompt",
                            "invalid_value");
    ids.push_back(int32_t(id));
  }
  return ids;
}

}  // namespace

ParsedRequest parse_completion_request(const std::string& body, const ModelInfo& m) {
  const json j = parse_body(body);
  ParsedRequest r;
  parse_common(j, m, r);
  const json* p = field(j, "prompt");
  if (!p) throw invalid_request("'prompt' is required", "prompt", "missing_required_parameter");
  const int64_t vocab = m.tokenizer->vocab_size();
  if (p->is_string()) {
    r.params.prompt = m.tokenizer->encode(p->get<std::string>(), true);
  } else if (p->is_array() && !p->empty() && (*p)[0].is_number()) {
    r.params.prompt = token_array(*p, vocab);
  } else if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) {
    r.params.prompt = m.tokenizer->encode((*p)[0].get<std::string>(), true);
  } else if (p->is_array() && p->size() == 1 && (*p)[0].is_array()) {
    r.params.prompt = token_array((*p)[0], vocab);
  } else if (p->is_array() && p->size() > 1) {
    throw invalid_request("only one prompt per request is supported", "prompt", "unsupported_value");
  } else {
    throw invalid_request("'prompt' must be a string, an array of token ids, or an array holding one of those",
                          "prompt", "invalid_type");
  }
  const json* lp = field(j, "logprobs");
  if (lp && lp->is_boolean()) {  // some clients send true for "just the chosen token"
    r.logprobs = lp->get<bool>();
    r.params.top_logprobs = r.logprobs ? 0 : -1;
  } else if (lp) {
    r.params.top_logprobs = int(get_int(j, "logprobs", 0, 0, 20));
    r.logprobs = true;
  }
  set_max_tokens(j, m, r, 16);
  return r;
}

ParsedRequest parse_chat_request(const std::string& body, const ModelInfo& m) {
  const json j = parse_body(body);
  ParsedRequest r;
  r.chat = true;
  parse_common(j, m, r);
  const json* msgs = field(j, "messages");
  if (!msgs) throw invalid_request("'messages' is required", "messages", "missing_required_parameter");
  if (!msgs->is_array()) throw invalid_request("'messages' must be an array", "messages", "invalid_type");
  if (msgs->empty()) throw invalid_request("'messages' must not be empty", "messages", "invalid_value");
  std::vector<ChatMessage> chat;
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& msg = (*msgs)[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!msg.is_object()) throw invalid_request(where + " must be an object", where, "invalid_type");
    const json* role = field(msg, "role");
    if (!role || !role->is_string()) throw invalid_request(where + ".role must be a string", where + ".role", "invalid_type");
    std::string rl = role->get<std::string>();
    if (rl == "developer") rl = "system";
    if (rl != "system" && rl != "user" && rl != "assistant" && rl != "tool")
      throw invalid_request(fmt::format("{}.role '{}' is not one of system, developer, user, assistant, tool", where, rl),
                            where + ".role", "invalid_value");
    std::string content;
    const json* c = field(msg, "content");
    if (c && c->is_string()) {
      content = c->get<std::string>();
    } else if (c && c->is_array()) {
      for (const auto& part : *c) {
        const json* text = part.is_object() ? field(part, "text") : nullptr;
        const json* type = part.is_object() ? field(part, "type") : nullptr;
        if (!type || !type->is_string() || type->get<std::string>() != "text" || !text || !text->is_string())
          throw invalid_request(where + ".content parts must be {\"type\": \"text\", \"text\": ...}",
                                where + ".content", "invalid_type");
        content += text->get<std::string>();
      }
    } else if (c || rl != "assistant") {
      throw invalid_request(where + ".content must be a string or an array of text parts", where + ".content",
                            "invalid_type");
    }
    chat.push_back({rl, std::move(content)});
  }
  std::string prompt;
  try {
    prompt = m.chat_template->render(chat, true, m.tokenizer->bos_token(), m.tokenizer->eos_token());
  } catch (const Error& e) {
    throw invalid_request(fmt::format("the chat template rejected the messages: {}", e.what()), "messages");
  }
  // Models trained with BOS get it even when the template does not write it (as
  // llama.cpp's server does); a template that writes it does not get a second one.
  r.params.prompt = m.tokenizer->encode(prompt, true);
  const int32_t bos = m.tokenizer->bos_id();
  if (bos >= 0 && r.params.prompt.size() >= 2 && r.params.prompt[0] == bos && r.params.prompt[1] == bos)
    r.params.prompt.erase(r.params.prompt.begin());
  r.logprobs = get_bool(j, "logprobs", false);
  if (field(j, "top_logprobs") && !r.logprobs)
    throw invalid_request("'top_logprobs' needs 'logprobs': true", "top_logprobs", "invalid_value");
  r.params.top_logprobs = r.logprobs ? int(get_int(j, "top_logprobs", 0, 0, 20)) : -1;
  set_max_tokens(j, m, r, INT64_MAX);
  return r;
}

std::string api_finish_reason(const std::string& reason) { return reason == "length" ? "length" : "stop"; }

// ---- responses -------------------------------------------------------------------

ResponseBuilder::ResponseBuilder(const ParsedRequest& req, const ModelInfo& m, uint64_t request_id)
    : req_(req), m_(m) {
  std::random_device rd;
  id_ = fmt::format("{}-{:x}{:08x}", req.chat ? "chatcmpl" : "cmpl", request_id, rd());
  created_ = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  logprobs_ = req.chat ? json{{"content", json::array()}, {"refusal", nullptr}}
                       : json{{"tokens", json::array()}, {"token_logprobs", json::array()},
                              {"top_logprobs", json::array()}, {"text_offset", json::array()}};
}

json ResponseBuilder::logprobs_of(const std::vector<TokenOut>& tokens, int64_t& offset) const {
  const Tokenizer& tok = *m_.tokenizer;
  auto bytes_of = [](const std::string& s) {
    json b = json::array();
    for (unsigned char c : s) b.push_back(int(c));
    return b;
  };
  if (req_.chat) {
    json content = json::array();
    for (const auto& t : tokens) {
      const std::string piece = tok.token_bytes(t.id, false);
      json top = json::array();
      for (const auto& alt : t.top) {
        const std::string s = tok.token_bytes(alt.id, false);
        top.push_back({{"token", s}, {"logprob", alt.logprob}, {"bytes", bytes_of(s)}});
      }
      content.push_back({{"token", piece}, {"logprob", t.logprob}, {"bytes", bytes_of(piece)}, {"top_logprobs", top}});
    }
    return json{{"content", content}, {"refusal", nullptr}};
  }
  json out{{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
           {"text_offset", json::array()}};
  for (const auto& t : tokens) {
    const std::string piece = tok.token_bytes(t.id, false);
    out["tokens"].push_back(piece);
    out["token_logprobs"].push_back(t.logprob);
    json top = json::object();
    for (const auto& alt : t.top) top[tok.token_bytes(alt.id, false)] = alt.logprob;
    out["top_logprobs"].push_back(top);
    out["text_offset"].push_back(offset);
    offset += int64_t(piece.size());
  }
  return out;
}

void ResponseBuilder::append_logprobs(json& into, const json& more) const {
  for (auto& [key, arr] : into.items())
    if (arr.is_array())
      for (const auto& v : more[key]) arr.push_back(v);
}

json ResponseBuilder::usage(const RequestUpdate& u) const {
  return json{{"prompt_tokens", u.prompt_tokens},
              {"completion_tokens", u.completion_tokens},
              {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

void ResponseBuilder::add(const RequestUpdate& u) {
  text_ += u.text;
  if (req_.logprobs && !u.tokens.empty()) append_logprobs(logprobs_, logprobs_of(u.tokens, text_offset_));
}

json ResponseBuilder::final_response(const RequestUpdate& last) const {
  json choice{{"index", 0},
              {"logprobs", req_.logprobs ? logprobs_ : json(nullptr)},
              {"finish_reason", api_finish_reason(last.finish_reason)}};
  if (req_.chat) choice["message"] = {{"role", "assistant"}, {"content", text_}, {"refusal", nullptr}};
  else choice["text"] = text_;
  return json{{"id", id_},
              {"object", req_.chat ? "chat.completion" : "text_completion"},
              {"created", created_},
              {"model", m_.id},
              {"system_fingerprint", "anybit"},
              {"choices", json::array({choice})},
              {"usage", usage(last)}};
}

json ResponseBuilder::chunk_base() const {
  json c{{"id", id_},
         {"object", req_.chat ? "chat.completion.chunk" : "text_completion"},
         {"created", created_},
         {"model", m_.id},
         {"system_fingerprint", "anybit"}};
  if (req_.include_usage) c["usage"] = nullptr;
  return c;
}

std::vector<json> ResponseBuilder::stream_chunks(const RequestUpdate& u) {
  std::vector<json> out;
  const bool has_tokens = req_.logprobs && !u.tokens.empty();
  if (u.text.empty() && !has_tokens && !u.finished && (sent_role_ || !req_.chat)) return out;
  json choice{{"index", 0},
              {"logprobs", has_tokens ? logprobs_of(u.tokens, text_offset_) : json(nullptr)},
              {"finish_reason", u.finished ? json(api_finish_reason(u.finish_reason)) : json(nullptr)}};
  if (req_.chat) {
    json delta = json::object();
    if (!sent_role_) delta["role"] = "assistant";
    if (!u.text.empty() || !sent_role_) delta["content"] = u.text;
    sent_role_ = true;
    choice["delta"] = delta;
  } else {
    choice["text"] = u.text;
  }
  json c = chunk_base();
  c["choices"] = json::array({choice});
  out.push_back(std::move(c));
  return out;
}

json ResponseBuilder::usage_chunk(const RequestUpdate& last) const {
  json c = chunk_base();
  c["choices"] = json::array();
  c["usage"] = usage(last);
  return c;
}

}  // namespace anybit::server
