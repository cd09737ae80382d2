// Tree-walking evaluator for the Jinja subset.
#include <cmath>
#include <ctime>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/jinja_ast.h"

namespace anybit::jinja {
namespace {

enum class Flow { kNormal, kBreak, kContinue };

// Bound on nesting (macro recursion, deep templates) so a hostile template
// cannot overflow the stack.
constexpr int kMaxDepth = 200;

class Interp {
 public:
  Interp(const std::string& origin, const Dict& vars) : origin_(origin) {
    scopes_.emplace_back();
    install_builtins();
    for (const auto& [k, v] : vars) scopes_.back()[k] = v;
  }

  Flow exec(const Body& body, std::string& out) {
    for (const StmtPtr& s : body) {
      const Flow f = exec_one(*s, out);
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

 private:
  struct DepthGuard {
    explicit DepthGuard(Interp& in, int line) : in_(in) {
      if (++in_.depth_ > kMaxDepth) fail("{}: line {}: template nesting too deep", in_.origin_, line);
    }
    ~DepthGuard() { --in_.depth_; }
    Interp& in_;
  };

  std::string where(int line) const { return fmt::format("{}: line {}", origin_, line); }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    return Value();
  }
  void assign(const std::string& name, Value v) { scopes_.back()[name] = std::move(v); }

  void install_builtins() {
    auto& g = scopes_.back();
    g["raise_exception"] = Value::make_func([this](std::vector<Value>& a, KwArgs&) -> Value {
      fail("{}: raise_exception: {}", origin_, a.empty() ? std::string("error") : to_str(a[0]));
    });
    g["range"] = Value::make_func([this](std::vector<Value>& a, KwArgs&) {
      int64_t start = 0, stop = 0, step = 1;
      if (a.size() == 1) {
        stop = a[0].i;
      } else if (a.size() >= 2) {
        start = a[0].i;
        stop = a[1].i;
        if (a.size() > 2) step = a[2].i;
      }
      if (step == 0) fail("{}: range() step must not be zero", origin_);
      List out;
      for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
        out.emplace_back(k);
        if (out.size() > 1000000) fail("{}: range() too large", origin_);
      }
      return Value::make_list(std::move(out));
    });
    auto make_dict = [](std::vector<Value>&, KwArgs& kw) { return Value::make_dict(Dict(kw.begin(), kw.end())); };
    g["namespace"] = Value::make_func(make_dict);
    g["dict"] = Value::make_func(make_dict);
    g["strftime_now"] = Value::make_func([](std::vector<Value>& a, KwArgs&) {
      const std::time_t t = std::time(nullptr);
      std::tm tm{};
      localtime_r(&t, &tm);
      char buf[128];
      const size_t n = std::strftime(buf, sizeof(buf), a.empty() ? "%Y-%m-%d" : to_str(a[0]).c_str(), &tm);
      return Value(std::string(buf, n));
    });
  }

  Flow exec_one(const Stmt& s, std::string& out) {
    switch (s.kind) {
      case Stmt::kText:
        out += s.text;
        return Flow::kNormal;
      case Stmt::kOutput:
        out += to_str(eval(*s.expr));
        return Flow::kNormal;
      case Stmt::kIf:
        for (const auto& [cond, body] : s.branches)
          if (!cond || eval(*cond).truthy()) return exec(body, out);
        return Flow::kNormal;
      case Stmt::kFor:
        exec_for(s, out);
        return Flow::kNormal;
      case Stmt::kSet: {
        Value v = eval(*s.expr);
        if (s.target_obj) {
          Value obj = eval(*s.target_obj);
          if (obj.type != Value::kDict) fail("{}: cannot set attribute '{}' here", where(s.line), s.target_attr);
          obj.set(s.target_attr, std::move(v));
        } else {
          bind_targets(s.targets, v, s.line);
        }
        return Flow::kNormal;
      }
      case Stmt::kSetBlock: {
        std::string captured;
        exec(s.body, captured);
        bind_targets(s.targets, Value(captured), s.line);
        return Flow::kNormal;
      }
      case Stmt::kMacro:
        define_macro(s);
        return Flow::kNormal;
      case Stmt::kBreak: return Flow::kBreak;
      case Stmt::kContinue: return Flow::kContinue;
    }
    return Flow::kNormal;
  }

  void bind_targets(const std::vector<std::string>& targets, const Value& v, int line) {
    if (targets.size() == 1) {
      assign(targets[0], v);
      return;
    }
    const List items = iterate(v, where(line));
    if (items.size() != targets.size())
      fail("{}: cannot unpack {} values into {} names", where(line), items.size(), targets.size());
    for (size_t k = 0; k < targets.size(); ++k) assign(targets[k], items[k]);
  }

  void exec_for(const Stmt& s, std::string& out) {
    DepthGuard guard(*this, s.line);
    List items = iterate(eval(*s.expr), where(s.line));
    scopes_.emplace_back();
    if (s.loop_filter) {
      List kept;
      for (const Value& x : items) {
        bind_targets(s.targets, x, s.line);
        if (eval(*s.loop_filter).truthy()) kept.push_back(x);
      }
      items.swap(kept);
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t k = 0; k < n; ++k) {
      Value loop = Value::make_dict({{"index0", Value(k)},
                                     {"index", Value(k + 1)},
                                     {"revindex0", Value(n - k - 1)},
                                     {"revindex", Value(n - k)},
                                     {"first", Value(k == 0)},
                                     {"last", Value(k == n - 1)},
                                     {"length", Value(n)},
                                     {"previtem", k > 0 ? items[k - 1] : Value()},
                                     {"nextitem", k + 1 < n ? items[k + 1] : Value()}});
      loop.set("cycle", Value::make_func([k](std::vector<Value>& a, KwArgs&) {
        return a.empty() ? Value() : a[static_cast<size_t>(k) % a.size()];
      }));
      assign("loop", loop);
      bind_targets(s.targets, items[k], s.line);
      if (exec(s.body, out) == Flow::kBreak) break;
    }
    if (n == 0) exec(s.else_body, out);
    scopes_.pop_back();
  }

  void define_macro(const Stmt& s) {
    const Stmt* m = &s;
    assign(s.name, Value::make_func([this, m](std::vector<Value>& args, KwArgs& kwargs) {
      DepthGuard guard(*this, m->line);
      scopes_.emplace_back();
      for (size_t k = 0; k < m->params.size(); ++k) {
        const auto& [pname, dflt] = m->params[k];
        Value v = k < args.size() ? args[k] : Value();
        for (const auto& [kname, kv] : kwargs)
          if (kname == pname) v = kv;
        if (v.is_undefined() && dflt) v = eval(*dflt);
        assign(pname, v);
      }
      std::string out;
      exec(m->body, out);
      scopes_.pop_back();
      return Value(out);
    }));
  }

  void eval_args(const Expr& e, size_t first, std::vector<Value>& args, KwArgs& kwargs) {
    for (size_t k = first; k < e.args.size(); ++k) args.push_back(eval(*e.args[k]));
    for (const auto& [name, x] : e.kwargs) kwargs.emplace_back(name, eval(*x));
  }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::kLiteral: return e.value;
      case Expr::kName: return lookup(e.name);
      case Expr::kList:
      case Expr::kTuple: {
        List items;
        for (const ExprPtr& x : e.args) items.push_back(eval(*x));
        return Value::make_list(std::move(items));
      }
      case Expr::kDict: {
        Value d = Value::make_dict();
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) d.set(to_str(eval(*e.args[k])), eval(*e.args[k + 1]));
        return d;
      }
      case Expr::kAttr: return get_attr(eval(*e.args[0]), e.name);
      case Expr::kIndex: return get_item(eval(*e.args[0]), eval(*e.args[1]));
      case Expr::kSlice: return slice(e);
      case Expr::kCall: return call(e);
      case Expr::kFilter: {
        Value in = eval(*e.args[0]);
        std::vector<Value> args;
        KwArgs kwargs;
        eval_args(e, 1, args, kwargs);
        return apply_filter(e.name, std::move(in), args, kwargs, where(e.line));
      }
      case Expr::kTest: {
        Value in = eval(*e.args[0]);
        std::vector<Value> args;
        KwArgs kwargs;
        eval_args(e, 1, args, kwargs);
        return Value(apply_test(e.name, in, args, where(e.line)) != e.negate);
      }
      case Expr::kUnary: {
        Value v = eval(*e.args[0]);
        if (e.name == "not") return Value(!v.truthy());
        if (!v.is_number()) fail("{}: unary {} on {}", where(e.line), e.name, repr(v));
        if (e.name == "+") return v;
        return v.type == Value::kInt ? Value(-v.i) : Value(-v.f);
      }
      case Expr::kBinary: return binary(e);
      case Expr::kCond: {
        if (eval(*e.args[1]).truthy()) return eval(*e.args[0]);
        return e.args[2] ? eval(*e.args[2]) : Value();
      }
    }
    return Value();
  }

  Value call(const Expr& e) {
    std::vector<Value> args;
    KwArgs kwargs;
    const Expr& callee = *e.args[0];
    if (callee.kind == Expr::kAttr) {
      Value obj = eval(*callee.args[0]);
      const Value* member = obj.get(callee.name);
      eval_args(e, 1, args, kwargs);
      if (member && member->type == Value::kFunc) return (*member->fn)(args, kwargs);
      return call_method(obj, callee.name, args, kwargs, where(e.line));
    }
    Value f = eval(callee);
    if (f.type != Value::kFunc)
      fail("{}: '{}' is not callable", where(e.line), callee.kind == Expr::kName ? callee.name : repr(f));
    eval_args(e, 1, args, kwargs);
    return (*f.fn)(args, kwargs);
  }

  Value slice(const Expr& e) {
    Value obj = eval(*e.args[0]);
    auto bound = [&](size_t k) -> std::pair<bool, int64_t> {
      if (!e.args[k]) return {false, 0};
      Value v = eval(*e.args[k]);
      if (v.is_none()) return {false, 0};
      if (v.type != Value::kInt) fail("{}: slice indices must be integers", where(e.line));
      return {true, v.i};
    };
    const auto [has_start, start_v] = bound(1);
    const auto [has_stop, stop_v] = bound(2);
    const auto [has_step, step_v] = bound(3);
    const int64_t step = has_step ? step_v : 1;
    if (step == 0) fail("{}: slice step cannot be zero", where(e.line));
    if (obj.type != Value::kList && obj.type != Value::kString) return Value();  // Jinja: undefined
    const List items = iterate(obj, where(e.line));
    const int64_t n = static_cast<int64_t>(items.size());
    auto norm = [&](bool has, int64_t v, int64_t dflt) {
      if (!has) return dflt;
      if (v < 0) v += n;
      return step > 0 ? std::clamp<int64_t>(v, 0, n) : std::clamp<int64_t>(v, -1, n - 1);
    };
    const int64_t start = norm(has_start, start_v, step > 0 ? 0 : n - 1);
    const int64_t stop = norm(has_stop, stop_v, step > 0 ? n : -1);
    List out;
    for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) out.push_back(items[static_cast<size_t>(k)]);
    if (obj.is_string()) {
      std::string s;
      for (const Value& c : out) s += c.s;
      return Value(s);
    }
    return Value::make_list(std::move(out));
  }

  Value binary(const Expr& e) {
    const std::string& op = e.name;
    if (op == "and") {
      Value a = eval(*e.args[0]);
      return a.truthy() ? eval(*e.args[1]) : a;
    }
    if (op == "or") {
      Value a = eval(*e.args[0]);
      return a.truthy() ? a : eval(*e.args[1]);
    }
    const Value a = eval(*e.args[0]);
    const Value b = eval(*e.args[1]);
    const std::string w = where(e.line);
    if (op == "==") return Value(equals(a, b));
    if (op == "!=") return Value(!equals(a, b));
    if (op == "<") return Value(less(a, b, w));
    if (op == ">") return Value(less(b, a, w));
    if (op == "<=") return Value(!less(b, a, w));
    if (op == ">=") return Value(!less(a, b, w));
    if (op == "in" || op == "not in") {
      bool found = false;
      if (b.is_string()) {
        found = a.is_string() && b.s.find(a.s) != std::string::npos;
      } else if (b.type == Value::kDict) {
        found = b.get(to_str(a)) != nullptr;
      } else {
        for (const Value& x : iterate(b, w))
          if (equals(x, a)) found = true;
      }
      return Value(found != (op == "not in"));
    }
    if (op == "~") return Value(to_str(a) + to_str(b));
    if (op == "+") {
      if (a.is_string() && b.is_string()) return Value(a.s + b.s);
      if (a.type == Value::kList && b.type == Value::kList) {
        List items = *a.list;
        items.insert(items.end(), b.list->begin(), b.list->end());
        return Value::make_list(std::move(items));
      }
    }
    if (op == "*") {  // sequence repetition, either order, bools counting as 0/1
      auto is_count = [](const Value& v) { return v.type == Value::kInt || v.type == Value::kBool; };
      auto is_seq = [](const Value& v) { return v.is_string() || v.type == Value::kList; };
      if ((is_seq(a) && is_count(b)) || (is_count(a) && is_seq(b))) {
        const Value& seq = is_seq(a) ? a : b;
        const Value& cnt = is_seq(a) ? b : a;
        const int64_t times = cnt.type == Value::kBool ? cnt.b : cnt.i;
        if (seq.is_string()) {
          std::string s;
          for (int64_t k = 0; k < times && s.size() < (1u << 24); ++k) s += seq.s;
          return Value(s);
        }
        List items;
        for (int64_t k = 0; k < times && items.size() < (1u << 20); ++k)
          items.insert(items.end(), seq.list->begin(), seq.list->end());
        return Value::make_list(std::move(items));
      }
    }
    const bool num_a = a.is_number() || a.type == Value::kBool, num_b = b.is_number() || b.type == Value::kBool;
    if (!num_a || !num_b) fail("{}: unsupported operands for '{}': {} and {}", w, op, repr(a), repr(b));
    const bool ints = a.type != Value::kFloat && b.type != Value::kFloat;
    const int64_t ia = a.type == Value::kBool ? a.b : a.i, ib = b.type == Value::kBool ? b.b : b.i;
    const double fa = a.as_double(), fb = b.as_double();
    if (op == "+") return ints ? Value(ia + ib) : Value(fa + fb);
    if (op == "-") return ints ? Value(ia - ib) : Value(fa - fb);
    if (op == "*") return ints ? Value(ia * ib) : Value(fa * fb);
    if (op == "/") {
      if (fb == 0) fail("{}: division by zero", w);
      return Value(fa / fb);
    }
    if (op == "//" || op == "%") {
      if (fb == 0) fail("{}: division by zero", w);
      if (ints) {
        // Python floors toward negative infinity.
        int64_t q = ia / ib, r = ia % ib;
        if (r != 0 && ((r < 0) != (ib < 0))) {
          --q;
          r += ib;
        }
        return op == "//" ? Value(q) : Value(r);
      }
      const double q = std::floor(fa / fb);
      return op == "//" ? Value(q) : Value(fa - q * fb);
    }
    if (op == "**") return ints && ib >= 0 ? Value(static_cast<int64_t>(std::llround(std::pow(fa, fb)))) : Value(std::pow(fa, fb));
    fail("{}: unknown operator '{}'", w, op);
  }

  std::string origin_;
  std::vector<std::unordered_map<std::string, Value>> scopes_;
  int depth_ = 0;
};

}  // namespace

Template::Template(const std::string& source, const std::string& origin)
    : root_(parse_template(source, origin)), origin_(origin) {}
Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const Dict& vars) const {
  Interp in(origin_, vars);
  std::string out;
  in.exec(root_->body, out);
  return out;
}

}  // namespace anybit::jinja
