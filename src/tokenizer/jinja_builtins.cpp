// Values, filters, tests and methods of the Jinja subset, with Python semantics
// where chat templates depend on them (truthiness, str(), ==, slicing, JSON).
#include <algorithm>
#include <cmath>
#include <set>

#include "core/error.h"
#include "tokenizer/jinja_ast.h"
#include "tokenizer/unicode_util.h"

namespace anybit::jinja {

Value Value::none() {
  Value v;
  v.type = kNone;
  return v;
}
Value Value::make_list(List items) {
  Value v;
  v.type = kList;
  v.list = std::make_shared<List>(std::move(items));
  return v;
}
Value Value::make_dict(Dict items) {
  Value v;
  v.type = kDict;
  v.dict = std::make_shared<Dict>(std::move(items));
  return v;
}
Value Value::make_func(Function fn) {
  Value v;
  v.type = kFunc;
  v.fn = std::make_shared<Function>(std::move(fn));
  return v;
}

bool Value::truthy() const {
  switch (type) {
    case kUndefined:
    case kNone: return false;
    case kBool: return b;
    case kInt: return i != 0;
    case kFloat: return f != 0.0;
    case kString: return !s.empty();
    case kList: return !list->empty();
    case kDict: return !dict->empty();
    case kFunc: return true;
  }
  return false;
}

const Value* Value::get(const std::string& key) const {
  if (type != kDict) return nullptr;
  for (const auto& [k, v] : *dict)
    if (k == key) return &v;
  return nullptr;
}

void Value::set(const std::string& key, Value v) {
  if (type != kDict) return;
  for (auto& [k, old] : *dict)
    if (k == key) {
      old = std::move(v);
      return;
    }
  dict->emplace_back(key, std::move(v));
}

namespace {

std::string float_str(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  if (d == std::floor(d) && std::fabs(d) < 1e16) return fmt::format("{:.1f}", d);
  return fmt::format("{}", d);
}

std::string quote(const std::string& s) {
  const char q = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
  std::string out(1, q);
  for (char c : s) {
    if (c == q || c == '\\') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  out.push_back(q);
  return out;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += fmt::format("\\u{:04x}", c);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  return out + "\"";
}

// Character offsets -> byte offsets, so slicing and indexing count characters.
std::vector<size_t> char_starts(const std::string& s) {
  std::vector<size_t> starts;
  for (size_t i = 0; i < s.size(); i += utf8::char_len(s, i)) starts.push_back(i);
  starts.push_back(s.size());
  return starts;
}

std::string strip_chars(const std::string& s, const std::string& chars, bool left, bool right) {
  const std::string set = chars.empty() ? std::string(" \t\n\r\f\v") : chars;
  size_t b = 0, e = s.size();
  if (left)
    while (b < e && set.find(s[b]) != std::string::npos) ++b;
  if (right)
    while (e > b && set.find(s[e - 1]) != std::string::npos) --e;
  return s.substr(b, e - b);
}

std::string case_map(std::string s, bool upper) {
  for (char& c : s) c = static_cast<char>(upper ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
  return s;
}

const Value& arg(std::vector<Value>& args, KwArgs& kwargs, size_t pos, const char* name) {
  static const Value undefined;
  for (const auto& [k, v] : kwargs)
    if (k == name) return v;
  return pos < args.size() ? args[pos] : undefined;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to, int64_t count = -1) {
  if (from.empty()) return s;
  size_t pos = 0;
  for (int64_t n = 0; (count < 0 || n < count) && (pos = s.find(from, pos)) != std::string::npos; ++n) {
    s.replace(pos, from.size(), to);
    pos += to.size();
  }
  return s;
}

}  // namespace

std::string to_str(const Value& v) {
  switch (v.type) {
    case Value::kUndefined: return "";
    case Value::kNone: return "None";
    case Value::kBool: return v.b ? "True" : "False";
    case Value::kInt: return std::to_string(v.i);
    case Value::kFloat: return float_str(v.f);
    case Value::kString: return v.s;
    default: return repr(v);
  }
}

std::string repr(const Value& v) {
  switch (v.type) {
    case Value::kString: return quote(v.s);
    case Value::kList: {
      std::string out = "[";
      for (size_t k = 0; k < v.list->size(); ++k) out += (k ? ", " : "") + repr((*v.list)[k]);
      return out + "]";
    }
    case Value::kDict: {
      std::string out = "{";
      for (size_t k = 0; k < v.dict->size(); ++k)
        out += (k ? ", " : "") + quote((*v.dict)[k].first) + ": " + repr((*v.dict)[k].second);
      return out + "}";
    }
    case Value::kFunc: return "<function>";
    default: return to_str(v);
  }
}

std::string to_json(const Value& v, int indent, int depth) {
  std::string nl, close_nl;
  if (indent >= 0) {
    nl.assign(static_cast<size_t>(indent * (depth + 1)) + 1, ' ');
    nl[0] = '\n';
    close_nl.assign(static_cast<size_t>(indent * depth) + 1, ' ');
    close_nl[0] = '\n';
  }
  const std::string sep = indent >= 0 ? "," : ", ";
  switch (v.type) {
    case Value::kUndefined:
    case Value::kNone: return "null";
    case Value::kBool: return v.b ? "true" : "false";
    case Value::kInt: return std::to_string(v.i);
    case Value::kFloat: return float_str(v.f);
    case Value::kString: return json_string(v.s);
    case Value::kList: {
      if (v.list->empty()) return "[]";
      std::string out = "[";
      for (size_t k = 0; k < v.list->size(); ++k) out += (k ? sep : "") + nl + to_json((*v.list)[k], indent, depth + 1);
      return out + close_nl + "]";
    }
    case Value::kDict: {
      if (v.dict->empty()) return "{}";
      std::string out = "{";
      for (size_t k = 0; k < v.dict->size(); ++k)
        out += (k ? sep : "") + nl + json_string((*v.dict)[k].first) + ": " +
               to_json((*v.dict)[k].second, indent, depth + 1);
      return out + close_nl + "}";
    }
    case Value::kFunc: return "null";
  }
  return "null";
}

bool equals(const Value& a, const Value& b) {
  const bool na = a.is_number() || a.type == Value::kBool, nb = b.is_number() || b.type == Value::kBool;
  if (na && nb) return a.as_double() == b.as_double();
  if (a.type != b.type) return false;
  switch (a.type) {
    case Value::kUndefined:
    case Value::kNone: return true;
    case Value::kString: return a.s == b.s;
    case Value::kList:
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!equals((*a.list)[k], (*b.list)[k])) return false;
      return true;
    case Value::kDict:
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, v] : *a.dict) {
        const Value* o = b.get(k);
        if (!o || !equals(v, *o)) return false;
      }
      return true;
    case Value::kFunc: return a.fn == b.fn;
    default: return false;
  }
}

bool less(const Value& a, const Value& b, const std::string& where) {
  const bool na = a.is_number() || a.type == Value::kBool, nb = b.is_number() || b.type == Value::kBool;
  if (na && nb) return a.as_double() < b.as_double();
  if (a.is_string() && b.is_string()) return a.s < b.s;
  if (a.type == Value::kList && b.type == Value::kList) {
    const size_t n = std::min(a.list->size(), b.list->size());
    for (size_t k = 0; k < n; ++k) {
      if (less((*a.list)[k], (*b.list)[k], where)) return true;
      if (less((*b.list)[k], (*a.list)[k], where)) return false;
    }
    return a.list->size() < b.list->size();
  }
  fail("{}: cannot compare {} and {}", where, repr(a), repr(b));
}

int64_t length(const Value& v) {
  switch (v.type) {
    case Value::kString: return static_cast<int64_t>(char_starts(v.s).size() - 1);
    case Value::kList: return static_cast<int64_t>(v.list->size());
    case Value::kDict: return static_cast<int64_t>(v.dict->size());
    default: return 0;
  }
}

List iterate(const Value& v, const std::string& where) {
  switch (v.type) {
    case Value::kList: return *v.list;
    case Value::kDict: {
      List keys;
      for (const auto& [k, val] : *v.dict) keys.emplace_back(k);
      return keys;
    }
    case Value::kString: {
      List chars;
      for (size_t i = 0; i < v.s.size();) {
        const size_t n = utf8::char_len(v.s, i);
        chars.emplace_back(v.s.substr(i, n));
        i += n;
      }
      return chars;
    }
    case Value::kUndefined:
    case Value::kNone: return {};
    default: fail("{}: {} is not iterable", where, repr(v));
  }
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.type == Value::kDict) {
    const Value* v = obj.get(key.is_string() ? key.s : to_str(key));
    return v ? *v : Value();
  }
  if ((obj.type == Value::kList || obj.type == Value::kString) && key.type == Value::kInt) {
    if (obj.type == Value::kList) {
      const int64_t n = static_cast<int64_t>(obj.list->size());
      const int64_t k = key.i < 0 ? key.i + n : key.i;
      return (k >= 0 && k < n) ? (*obj.list)[static_cast<size_t>(k)] : Value();
    }
    const auto starts = char_starts(obj.s);
    const int64_t n = static_cast<int64_t>(starts.size()) - 1;
    const int64_t k = key.i < 0 ? key.i + n : key.i;
    if (k < 0 || k >= n) return Value();
    return Value(obj.s.substr(starts[k], starts[k + 1] - starts[k]));
  }
  return Value();
}

Value get_attr(const Value& obj, const std::string& name) {
  if (obj.type == Value::kDict) {
    const Value* v = obj.get(name);
    return v ? *v : Value();
  }
  if (!name.empty() && std::isdigit(static_cast<unsigned char>(name[0]))) return get_item(obj, Value(static_cast<int64_t>(std::stoll(name))));
  return Value();
}

bool apply_test(const std::string& name, const Value& v, std::vector<Value>& args, const std::string& where) {
  auto a0 = [&]() -> const Value& {
    if (args.empty()) fail("{}: test '{}' needs an argument", where, name);
    return args[0];
  };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "number") return v.is_number() || v.type == Value::kBool;  // Python: bool is an int
  if (name == "integer") return v.type == Value::kInt;
  if (name == "float") return v.type == Value::kFloat;
  if (name == "boolean") return v.type == Value::kBool;
  if (name == "true") return v.type == Value::kBool && v.b;
  if (name == "false") return v.type == Value::kBool && !v.b;
  if (name == "mapping") return v.type == Value::kDict;
  if (name == "sequence") return v.type == Value::kList || v.type == Value::kString;
  if (name == "iterable")  // Jinja's Undefined iterates as empty
    return v.type == Value::kList || v.type == Value::kString || v.type == Value::kDict || v.is_undefined();
  if (name == "callable") return v.type == Value::kFunc;
  const bool integral = v.type == Value::kInt || v.type == Value::kBool;
  const int64_t iv = v.type == Value::kBool ? v.b : v.i;
  if (name == "odd") return integral && (iv % 2 != 0);
  if (name == "even") return integral && (iv % 2 == 0);
  if (name == "divisibleby") return a0().type == Value::kInt && a0().i != 0 && integral && iv % a0().i == 0;
  if (name == "equalto" || name == "eq" || name == "sameas") return equals(v, a0());
  if (name == "ne") return !equals(v, a0());
  if (name == "lt" || name == "lessthan") return less(v, a0(), where);
  if (name == "gt" || name == "greaterthan") return less(a0(), v, where);
  if (name == "le") return !less(a0(), v, where);
  if (name == "ge") return !less(v, a0(), where);
  if (name == "in") {
    for (const Value& x : iterate(a0(), where))
      if (equals(x, v)) return true;
    return a0().is_string() && v.is_string() && a0().s.find(v.s) != std::string::npos;
  }
  if (name == "lower") return v.is_string() && case_map(v.s, false) == v.s;
  if (name == "upper") return v.is_string() && case_map(v.s, true) == v.s;
  fail("{}: unknown test '{}'", where, name);
}

Value apply_filter(const std::string& name, Value v, std::vector<Value>& args, KwArgs& kwargs,
                   const std::string& where) {
  if (name == "trim") return Value(strip_chars(to_str(v), to_str(arg(args, kwargs, 0, "chars")), true, true));
  if (name == "length" || name == "count") return Value(length(v));
  if (name == "upper") return Value(case_map(to_str(v), true));
  if (name == "lower") return Value(case_map(to_str(v), false));
  if (name == "capitalize" || name == "title") {
    std::string s = case_map(to_str(v), false);
    bool start = true;
    for (char& c : s) {
      if (start && std::isalpha(static_cast<unsigned char>(c))) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      start = name == "title" ? !std::isalnum(static_cast<unsigned char>(c)) : false;
    }
    return Value(s);
  }
  if (name == "string") return Value(to_str(v));
  if (name == "safe" || name == "e" || name == "escape") return v;  // no autoescaping in chat templates
  if (name == "int") {
    if (v.type == Value::kFloat) return Value(static_cast<int64_t>(v.f));
    if (v.is_string()) return Value(static_cast<int64_t>(std::strtoll(v.s.c_str(), nullptr, 10)));
    return Value(static_cast<int64_t>(v.as_double()));
  }
  if (name == "float") return Value(v.is_string() ? std::strtod(v.s.c_str(), nullptr) : v.as_double());
  if (name == "abs") return v.type == Value::kInt ? Value(v.i < 0 ? -v.i : v.i) : Value(std::fabs(v.as_double()));
  if (name == "default" || name == "d") {
    const bool boolean = arg(args, kwargs, 1, "boolean").truthy();
    if (v.is_undefined() || (boolean && !v.truthy())) {
      const Value& d = arg(args, kwargs, 0, "default_value");
      return d.is_undefined() ? Value("") : d;
    }
    return v;
  }
  if (name == "list") return Value::make_list(iterate(v, where));
  if (name == "first" || name == "last") {
    List items = iterate(v, where);
    if (items.empty()) return Value();
    return name == "first" ? items.front() : items.back();
  }
  if (name == "reverse") {
    List items = iterate(v, where);
    std::reverse(items.begin(), items.end());
    if (v.is_string()) {
      std::string s;
      for (const Value& x : items) s += x.s;
      return Value(s);
    }
    return Value::make_list(std::move(items));
  }
  if (name == "join") {
    const std::string sep = to_str(arg(args, kwargs, 0, "d"));
    const Value& attr = arg(args, kwargs, 1, "attribute");
    std::string out;
    bool first = true;
    for (const Value& x : iterate(v, where)) {
      out += (first ? "" : sep) + to_str(attr.is_undefined() ? x : get_attr(x, to_str(attr)));
      first = false;
    }
    return Value(out);
  }
  if (name == "replace") {
    const Value& count = arg(args, kwargs, 2, "count");
    return Value(replace_all(to_str(v), to_str(arg(args, kwargs, 0, "old")), to_str(arg(args, kwargs, 1, "new")),
                             count.type == Value::kInt ? count.i : -1));
  }
  if (name == "tojson") {
    const Value& ind = arg(args, kwargs, 0, "indent");
    return Value(to_json(v, ind.type == Value::kInt ? static_cast<int>(ind.i) : -1));
  }
  if (name == "items") {
    List out;
    if (v.type == Value::kDict)
      for (const auto& [k, x] : *v.dict) out.push_back(Value::make_list({Value(k), x}));
    return Value::make_list(std::move(out));
  }
  if (name == "selectattr" || name == "rejectattr" || name == "select" || name == "reject") {
    const bool by_attr = name == "selectattr" || name == "rejectattr";
    const bool keep_if = name == "selectattr" || name == "select";
    const size_t test_pos = by_attr ? 1 : 0;
    List out;
    for (const Value& x : iterate(v, where)) {
      const Value item = by_attr ? get_attr(x, to_str(args.empty() ? Value() : args[0])) : x;
      bool ok;
      if (args.size() > test_pos) {
        std::vector<Value> targs(args.begin() + static_cast<std::ptrdiff_t>(test_pos) + 1, args.end());
        ok = apply_test(to_str(args[test_pos]), item, targs, where);
      } else {
        ok = item.truthy();
      }
      if (ok == keep_if) out.push_back(x);
    }
    return Value::make_list(std::move(out));
  }
  if (name == "map") {
    const Value& attr = arg(args, kwargs, 99, "attribute");
    List out;
    for (const Value& x : iterate(v, where)) {
      if (!attr.is_undefined()) {
        out.push_back(get_attr(x, to_str(attr)));
      } else if (!args.empty()) {
        std::vector<Value> rest(args.begin() + 1, args.end());
        KwArgs none;
        out.push_back(apply_filter(to_str(args[0]), x, rest, none, where));
      } else {
        out.push_back(x);
      }
    }
    return Value::make_list(std::move(out));
  }
  if (name == "unique") {
    List out;
    for (const Value& x : iterate(v, where))
      if (std::none_of(out.begin(), out.end(), [&](const Value& y) { return equals(x, y); })) out.push_back(x);
    return Value::make_list(std::move(out));
  }
  if (name == "indent") {
    const Value& w = arg(args, kwargs, 0, "width");
    const std::string pad(w.type == Value::kInt ? static_cast<size_t>(w.i) : 4, ' ');
    const bool first = arg(args, kwargs, 1, "first").truthy();
    std::string s = to_str(v), out = first ? pad : "";
    for (size_t k = 0; k < s.size(); ++k) {
      out.push_back(s[k]);
      if (s[k] == '\n' && k + 1 < s.size() && s[k + 1] != '\n') out += pad;
    }
    return Value(out);
  }
  fail("{}: unknown filter '{}'", where, name);
}

Value call_method(const Value& obj, const std::string& name, std::vector<Value>& args, KwArgs& kwargs,
                  const std::string& where) {
  if (obj.is_string()) {
    const std::string& s = obj.s;
    auto a = [&](size_t k) { return k < args.size() ? to_str(args[k]) : std::string(); };
    if (name == "strip") return Value(strip_chars(s, a(0), true, true));
    if (name == "lstrip") return Value(strip_chars(s, a(0), true, false));
    if (name == "rstrip") return Value(strip_chars(s, a(0), false, true));
    if (name == "upper") return Value(case_map(s, true));
    if (name == "lower") return Value(case_map(s, false));
    if (name == "title" || name == "capitalize") return apply_filter(name, obj, args, kwargs, where);
    if (name == "startswith") return Value(s.rfind(a(0), 0) == 0);
    if (name == "endswith") return Value(s.size() >= a(0).size() && s.compare(s.size() - a(0).size(), a(0).size(), a(0)) == 0);
    if (name == "replace") return apply_filter("replace", obj, args, kwargs, where);
    if (name == "find") return Value(s.find(a(0)) == std::string::npos ? int64_t{-1} : static_cast<int64_t>(s.find(a(0))));
    if (name == "split") {
      List out;
      if (args.empty() || args[0].is_none()) {
        size_t i = 0;
        while (i < s.size()) {
          while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
          size_t j = i;
          while (j < s.size() && !std::isspace(static_cast<unsigned char>(s[j]))) ++j;
          if (j > i) out.emplace_back(s.substr(i, j - i));
          i = j;
        }
      } else {
        const std::string sep = a(0);
        if (sep.empty()) fail("{}: empty separator", where);
        size_t pos = 0;
        for (size_t hit; (hit = s.find(sep, pos)) != std::string::npos; pos = hit + sep.size())
          out.emplace_back(s.substr(pos, hit - pos));
        out.emplace_back(s.substr(pos));
      }
      return Value::make_list(std::move(out));
    }
  }
  if (obj.type == Value::kDict) {
    if (name == "items" || name == "keys" || name == "values") {
      List out;
      for (const auto& [k, x] : *obj.dict) {
        if (name == "items") out.push_back(Value::make_list({Value(k), x}));
        if (name == "keys") out.emplace_back(k);
        if (name == "values") out.push_back(x);
      }
      return Value::make_list(std::move(out));
    }
    if (name == "get") {
      const Value* x = obj.get(args.empty() ? std::string() : to_str(args[0]));
      return x ? *x : (args.size() > 1 ? args[1] : Value::none());
    }
  }
  if (obj.type == Value::kList && name == "append" && !args.empty()) {
    obj.list->push_back(args[0]);
    return Value::none();
  }
  fail("{}: unknown method '{}' on {}", where, name, repr(obj).substr(0, 40));
}

}  // namespace anybit::jinja
