// A Jinja2 subset, enough for the chat templates published with Hugging Face
// models (Llama-3, Qwen2/ChatML, Mistral, ...). Rendering follows what
// transformers does: trim_blocks and lstrip_blocks on, loop controls enabled,
// no autoescaping.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace anybit::jinja {

struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // keeps insertion order, like Python
using KwArgs = std::vector<std::pair<std::string, Value>>;
using Function = std::function<Value(std::vector<Value>& args, KwArgs& kwargs)>;

struct Value {
  enum Type { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kFunc };
  Type type = kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::shared_ptr<List> list;  // shared: lists and dicts (namespaces) are references in Jinja
  std::shared_ptr<Dict> dict;
  std::shared_ptr<Function> fn;

  Value() = default;
  static Value none();
  Value(bool v) : type(kBool), b(v) {}
  Value(int v) : type(kInt), i(v) {}
  Value(int64_t v) : type(kInt), i(v) {}
  Value(double v) : type(kFloat), f(v) {}
  Value(std::string v) : type(kString), s(std::move(v)) {}
  Value(const char* v) : type(kString), s(v) {}
  static Value make_list(List items = {});
  static Value make_dict(Dict items = {});
  static Value make_func(Function fn);

  bool is_undefined() const { return type == kUndefined; }
  bool is_none() const { return type == kNone; }
  bool is_string() const { return type == kString; }
  bool is_number() const { return type == kInt || type == kFloat; }
  bool truthy() const;
  double as_double() const { return type == kInt ? static_cast<double>(i) : type == kFloat ? f : b ? 1.0 : 0.0; }

  // Dict helpers (nullptr / no-op when not a dict).
  const Value* get(const std::string& key) const;
  void set(const std::string& key, Value v);
};

// Python-like str(), repr(), ==, < and JSON.
std::string to_str(const Value& v);
std::string repr(const Value& v);
bool equals(const Value& a, const Value& b);
bool less(const Value& a, const Value& b, const std::string& where);
std::string to_json(const Value& v, int indent = -1, int depth = 0);

struct Node;  // parsed template

class Template {
 public:
  // Throws anybit::Error "<origin>: line N: ..." on a syntax error.
  Template(const std::string& source, const std::string& origin);
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with `vars` as globals (plus range, namespace, raise_exception, ...).
  // raise_exception(msg) and evaluation errors throw anybit::Error.
  std::string render(const Dict& vars) const;

 private:
  std::shared_ptr<const Node> root_;
  std::string origin_;
};

}  // namespace anybit::jinja
