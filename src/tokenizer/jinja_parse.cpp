// Jinja lexer and parser: source -> Stmt/Expr tree, with transformers' whitespace
// rules (trim_blocks, lstrip_blocks, and the explicit "-" / "+" markers).
#include <cctype>
#include <cstdlib>

#include "core/error.h"
#include "tokenizer/jinja_ast.h"

namespace anybit::jinja {
namespace {

struct Piece {
  enum Kind { kText, kExpr, kStmt, kComment } kind;
  std::string content;
  int line = 1;
  bool trim_before = false;  // "{%-"
  bool trim_after = false;   // "-%}"
  bool keep_before = false;  // "{%+": no lstrip_blocks
};

class Splitter {
 public:
  Splitter(std::string src, const std::string& origin) : src_(std::move(src)), origin_(origin) {}

  std::vector<Piece> run() {
    // Jinja's default keep_trailing_newline=False: one final newline is dropped.
    if (src_.size() >= 2 && src_.compare(src_.size() - 2, 2, "\r\n") == 0) {
      src_.resize(src_.size() - 2);
    } else if (!src_.empty() && src_.back() == '\n') {
      src_.pop_back();
    }
    size_t pos = 0;
    while (pos < src_.size()) {
      const size_t open = find_open(pos);
      if (open > pos) add_text(pos, open);
      if (open >= src_.size()) break;
      pos = read_tag(open);
    }
    apply_whitespace_rules();
    return std::move(pieces_);
  }

 private:
  size_t find_open(size_t pos) const {
    for (size_t p = src_.find('{', pos); p != std::string::npos; p = src_.find('{', p + 1)) {
      if (p + 1 < src_.size() && (src_[p + 1] == '{' || src_[p + 1] == '%' || src_[p + 1] == '#')) return p;
    }
    return src_.size();
  }

  int line_at(size_t pos) {
    for (; line_pos_ < pos && line_pos_ < src_.size(); ++line_pos_)
      if (src_[line_pos_] == '\n') ++line_;
    return line_;
  }

  void add_text(size_t b, size_t e) {
    Piece p{Piece::kText, src_.substr(b, e - b)};
    p.line = line_at(b);
    pieces_.push_back(std::move(p));
  }

  // Reads one tag starting at `open`; returns the position after it.
  size_t read_tag(size_t open) {
    const char type = src_[open + 1];
    Piece p{type == '{' ? Piece::kExpr : type == '%' ? Piece::kStmt : Piece::kComment, ""};
    p.line = line_at(open);
    size_t pos = open + 2;
    if (pos < src_.size() && src_[pos] == '-') {
      p.trim_before = true;
      ++pos;
    } else if (pos < src_.size() && src_[pos] == '+') {
      p.keep_before = true;
      ++pos;
    }
    const char close = type == '{' ? '}' : type == '%' ? '%' : '#';
    size_t end = std::string::npos;
    if (p.kind == Piece::kComment) {
      end = src_.find("#}", pos);
    } else {
      // Skip string literals and nested brackets so "}}" inside them does not close the tag.
      int depth = 0;
      for (size_t i = pos; i < src_.size(); ++i) {
        const char c = src_[i];
        if (c == '"' || c == '\'') {
          size_t q = i + 1;
          while (q < src_.size() && src_[q] != c) q += (src_[q] == '\\') ? 2 : 1;
          i = q;
        } else if (depth == 0 && c == close && i + 1 < src_.size() && src_[i + 1] == '}') {
          end = i;
          break;
        } else if (c == '{' || c == '[' || c == '(') {
          ++depth;
        } else if ((c == '}' || c == ']' || c == ')') && depth > 0) {
          --depth;
        }
      }
    }
    if (end == std::string::npos) fail("{}: line {}: unclosed tag", origin_, p.line);
    size_t content_end = end;
    if (content_end > pos && src_[content_end - 1] == '-') {
      p.trim_after = true;
      --content_end;
    }
    p.content = src_.substr(pos, content_end - pos);
    const size_t after = end + 2;
    if (p.kind == Piece::kStmt && is_keyword(p.content, "raw")) return read_raw(after, std::move(p));
    pieces_.push_back(std::move(p));
    return after;
  }

  static bool is_keyword(const std::string& content, const char* kw) {
    size_t b = 0, e = content.size();
    while (b < e && std::isspace(static_cast<unsigned char>(content[b]))) ++b;
    while (e > b && std::isspace(static_cast<unsigned char>(content[e - 1]))) --e;
    return content.compare(b, e - b, kw) == 0;
  }

  // {% raw %}...{% endraw %}: the text between is output verbatim.
  size_t read_raw(size_t pos, Piece open_tag) {
    for (size_t p = src_.find("{%", pos); p != std::string::npos; p = src_.find("{%", p + 2)) {
      size_t q = p + 2;
      const bool trim_before = q < src_.size() && src_[q] == '-';
      if (trim_before) ++q;
      const size_t close = src_.find("%}", q);
      if (close == std::string::npos) break;
      std::string inner = src_.substr(q, close - q);
      const bool trim_after = !inner.empty() && inner.back() == '-';
      if (trim_after) inner.pop_back();
      if (!is_keyword(inner, "endraw")) continue;
      open_tag.kind = Piece::kComment;  // behaves like a tag that outputs nothing
      pieces_.push_back(std::move(open_tag));
      Piece text{Piece::kText, src_.substr(pos, p - pos)};
      text.line = line_at(pos);
      pieces_.push_back(std::move(text));
      Piece end_tag{Piece::kComment, ""};
      end_tag.trim_before = trim_before;
      end_tag.trim_after = trim_after;
      pieces_.push_back(std::move(end_tag));
      return close + 2;
    }
    fail("{}: line {}: {{% raw %}} without {{% endraw %}}", origin_, open_tag.line);
  }

  void apply_whitespace_rules() {
    auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
    // Two passes so lstrip_blocks sees the line as written, before trim_blocks
    // removes a newline from the same text.
    for (size_t k = 1; k < pieces_.size(); ++k) {
      const Piece& tag = pieces_[k];
      if (tag.kind == Piece::kText || pieces_[k - 1].kind != Piece::kText) continue;
      std::string& t = pieces_[k - 1].content;
      if (tag.trim_before) {
        while (!t.empty() && is_space(t.back())) t.pop_back();
      } else if (tag.kind != Piece::kExpr && !tag.keep_before) {
        // lstrip_blocks: drop spaces/tabs between the start of the line and the tag.
        const size_t nl = t.find_last_of('\n');
        const size_t from = nl == std::string::npos ? 0 : nl + 1;
        const bool line_start = nl != std::string::npos || k == 1;
        if (line_start && t.find_first_not_of(" \t", from) == std::string::npos) t.erase(from);
      }
    }
    for (size_t k = 0; k + 1 < pieces_.size(); ++k) {
      const Piece& tag = pieces_[k];
      if (tag.kind == Piece::kText || pieces_[k + 1].kind != Piece::kText) continue;
      std::string& t = pieces_[k + 1].content;
      if (tag.trim_after) {
        size_t n = 0;
        while (n < t.size() && is_space(t[n])) ++n;
        t.erase(0, n);
      } else if (tag.kind != Piece::kExpr) {
        // trim_blocks: the first newline after a block tag goes.
        if (t.rfind("\r\n", 0) == 0) {
          t.erase(0, 2);
        } else if (!t.empty() && t[0] == '\n') {
          t.erase(0, 1);
        }
      }
    }
  }

  std::string src_;
  const std::string& origin_;
  std::vector<Piece> pieces_;
  size_t line_pos_ = 0;
  int line_ = 1;
};

struct Tok {
  enum Kind { kName, kInt, kFloat, kString, kOp, kEnd } kind;
  std::string text;
  int64_t i = 0;
  double f = 0;
};

std::vector<Tok> lex(const std::string& s, const std::string& where) {
  std::vector<Tok> out;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      out.push_back({Tok::kName, s.substr(i, j - i)});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      bool is_float = false;
      if (j + 1 < s.size() && s[j] == '.' && std::isdigit(static_cast<unsigned char>(s[j + 1]))) {
        is_float = true;
        ++j;
        while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
      }
      std::string num;
      for (size_t k = i; k < j; ++k)
        if (s[k] != '_') num.push_back(s[k]);
      Tok t{is_float ? Tok::kFloat : Tok::kInt, num};
      if (is_float) {
        t.f = std::strtod(num.c_str(), nullptr);
      } else {
        t.i = std::strtoll(num.c_str(), nullptr, 10);
      }
      out.push_back(std::move(t));
      i = j;
    } else if (c == '"' || c == '\'') {
      std::string v;
      size_t j = i + 1;
      for (; j < s.size() && s[j] != c; ++j) {
        if (s[j] == '\\' && j + 1 < s.size()) {
          const char e = s[++j];
          switch (e) {
            case 'n': v.push_back('\n'); break;
            case 't': v.push_back('\t'); break;
            case 'r': v.push_back('\r'); break;
            case '\\': v.push_back('\\'); break;
            case '\'': v.push_back('\''); break;
            case '"': v.push_back('"'); break;
            default: v.push_back('\\'); v.push_back(e); break;
          }
        } else {
          v.push_back(s[j]);
        }
      }
      if (j >= s.size()) fail("{}: unterminated string", where);
      out.push_back({Tok::kString, std::move(v)});
      i = j + 1;
    } else {
      static const char* two[] = {"==", "!=", "<=", ">=", "//", "**"};
      std::string op(1, c);
      for (const char* t : two)
        if (s.compare(i, 2, t) == 0) op = t;
      if (op.size() == 1 && std::string("+-*/%~<>=()[]{}.,:|").find(c) == std::string::npos)
        fail("{}: unexpected character '{}'", where, c);
      out.push_back({Tok::kOp, op});
      i += op.size();
    }
  }
  out.push_back({Tok::kEnd, ""});
  return out;
}

// Recursive-descent expression parser over one tag's tokens.
class ExprParser {
 public:
  ExprParser(std::vector<Tok> toks, std::string where, int line)
      : t_(std::move(toks)), where_(std::move(where)), line_(line) {}

  bool at_end() const { return t_[p_].kind == Tok::kEnd; }
  bool is_name(const char* n) const { return t_[p_].kind == Tok::kName && t_[p_].text == n; }
  bool is_op(const char* o) const { return t_[p_].kind == Tok::kOp && t_[p_].text == o; }
  bool accept_name(const char* n) {
    if (!is_name(n)) return false;
    ++p_;
    return true;
  }
  bool accept_op(const char* o) {
    if (!is_op(o)) return false;
    ++p_;
    return true;
  }
  void expect_op(const char* o) {
    if (!accept_op(o)) error(fmt::format("expected '{}'", o));
  }
  std::string expect_name() {
    if (t_[p_].kind != Tok::kName) error("expected a name");
    return t_[p_++].text;
  }
  void expect_end() {
    if (!at_end()) error(fmt::format("unexpected '{}'", t_[p_].text));
  }
  [[noreturn]] void error(const std::string& msg) const {
    fail("{}: line {}: {} (at '{}')", where_, line_, msg, t_[p_].kind == Tok::kEnd ? "end of tag" : t_[p_].text);
  }

  ExprPtr expression(bool allow_cond = true) {
    ExprPtr e = or_expr();
    if (allow_cond && is_name("if")) {
      ++p_;
      auto c = make(Expr::kCond);
      c->args.push_back(e);
      c->args.push_back(or_expr());
      c->args.push_back(accept_name("else") ? expression() : nullptr);
      return c;
    }
    return e;
  }

  // Expression or bare tuple "a, b" (for "set a, b = ..." values and loops).
  ExprPtr tuple_or_expr(bool allow_cond = true) {
    ExprPtr e = expression(allow_cond);
    if (!is_op(",")) return e;
    auto t = make(Expr::kTuple);
    t->args.push_back(e);
    while (accept_op(",")) {
      if (at_end() || is_name("if") || is_name("recursive")) break;
      t->args.push_back(expression(allow_cond));
    }
    return t;
  }

 private:
  ExprPtr make(Expr::Kind k) { return std::make_shared<Expr>(k, line_); }
  ExprPtr binary(const std::string& op, ExprPtr a, ExprPtr b) {
    auto e = make(Expr::kBinary);
    e->name = op;
    e->args = {std::move(a), std::move(b)};
    return e;
  }

  ExprPtr or_expr() {
    ExprPtr e = and_expr();
    while (accept_name("or")) e = binary("or", e, and_expr());
    return e;
  }
  ExprPtr and_expr() {
    ExprPtr e = not_expr();
    while (accept_name("and")) e = binary("and", e, not_expr());
    return e;
  }
  ExprPtr not_expr() {
    if (accept_name("not")) {
      auto e = make(Expr::kUnary);
      e->name = "not";
      e->args.push_back(not_expr());
      return e;
    }
    return compare();
  }
  ExprPtr compare() {
    ExprPtr left = add();
    ExprPtr result;
    for (;;) {
      std::string op;
      for (const char* o : {"==", "!=", "<", "<=", ">", ">="})
        if (is_op(o)) op = o;
      if (!op.empty()) {
        ++p_;
      } else if (is_name("in")) {
        ++p_;
        op = "in";
      } else if (is_name("not") && t_[p_ + 1].kind == Tok::kName && t_[p_ + 1].text == "in") {
        p_ += 2;
        op = "not in";
      } else {
        break;
      }
      ExprPtr right = add();
      // Chained comparisons (a < b < c) mean a < b and b < c.
      ExprPtr cmp = binary(op, left, right);
      result = result ? binary("and", result, cmp) : cmp;
      left = right;
    }
    return result ? result : left;
  }
  ExprPtr add() {
    ExprPtr e = concat();
    for (;;) {
      if (is_op("+") || is_op("-")) {
        const std::string op = t_[p_++].text;
        e = binary(op, e, concat());
      } else {
        return e;
      }
    }
  }
  ExprPtr concat() {
    ExprPtr e = mul();
    while (accept_op("~")) e = binary("~", e, mul());
    return e;
  }
  ExprPtr mul() {
    ExprPtr e = power();
    for (;;) {
      if (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
        const std::string op = t_[p_++].text;
        e = binary(op, e, power());
      } else {
        return e;
      }
    }
  }
  ExprPtr power() {
    ExprPtr e = unary();
    while (accept_op("**")) e = binary("**", e, unary());
    return e;
  }
  // As in Jinja, "-x | f" is "(-x) | f": the operand of a sign takes no filters,
  // the signed value does.
  ExprPtr unary(bool with_filters = true) {
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      e = make(Expr::kUnary);
      e->name = t_[p_++].text;
      e->args.push_back(unary(false));
    } else {
      e = postfix(primary());
    }
    return with_filters ? filters(e) : e;
  }

  void call_args(Expr& e) {
    if (accept_op(")")) return;
    do {
      if (is_op(")")) break;  // trailing comma
      if (t_[p_].kind == Tok::kName && t_[p_ + 1].kind == Tok::kOp && t_[p_ + 1].text == "=") {
        std::string key = t_[p_].text;
        p_ += 2;
        e.kwargs.emplace_back(std::move(key), expression());
      } else {
        e.args.push_back(expression());
      }
    } while (accept_op(","));
    expect_op(")");
  }

  ExprPtr postfix(ExprPtr e) {
    for (;;) {
      if (accept_op(".")) {
        auto a = make(Expr::kAttr);
        a->args.push_back(e);
        if (t_[p_].kind == Tok::kInt) {
          a->name = t_[p_++].text;
        } else {
          a->name = expect_name();
        }
        e = a;
      } else if (accept_op("[")) {
        ExprPtr parts[3];
        int n = 0;
        bool slice = false;
        for (;;) {
          if (!is_op(":") && !is_op("]")) parts[n] = expression();
          if (accept_op(":")) {
            slice = true;
            if (++n > 2) error("too many ':' in slice");
            continue;
          }
          break;
        }
        expect_op("]");
        auto x = make(slice ? Expr::kSlice : Expr::kIndex);
        x->args.push_back(e);
        if (slice) {
          x->args.insert(x->args.end(), {parts[0], parts[1], parts[2]});
        } else {
          if (!parts[0]) error("empty subscript");
          x->args.push_back(parts[0]);
        }
        e = x;
      } else if (accept_op("(")) {
        auto c = make(Expr::kCall);
        c->args.push_back(e);
        call_args(*c);
        e = c;
      } else {
        return e;
      }
    }
  }

  ExprPtr filters(ExprPtr e) {
    for (;;) {
      if (accept_op("|")) {
        auto f = make(Expr::kFilter);
        f->name = expect_name();
        f->args.push_back(e);
        if (accept_op("(")) call_args(*f);
        e = f;
      } else if (accept_name("is")) {
        auto t = make(Expr::kTest);
        t->negate = accept_name("not");
        t->name = expect_name();
        t->args.push_back(e);
        if (accept_op("(")) {
          call_args(*t);
        } else if (t_[p_].kind == Tok::kString || t_[p_].kind == Tok::kInt || t_[p_].kind == Tok::kFloat ||
                   (t_[p_].kind == Tok::kName && !is_name("and") && !is_name("or") && !is_name("else") &&
                    !is_name("if") && !is_name("in") && !is_name("not") && !is_name("is"))) {
          t->args.push_back(postfix(primary()));  // "is divisibleby 3", "is sameas none"
        }
        e = t;
      } else {
        return e;
      }
    }
  }

  ExprPtr primary() {
    const Tok& t = t_[p_];
    switch (t.kind) {
      case Tok::kInt: {
        auto e = make(Expr::kLiteral);
        e->value = Value(t.i);
        ++p_;
        return e;
      }
      case Tok::kFloat: {
        auto e = make(Expr::kLiteral);
        e->value = Value(t.f);
        ++p_;
        return e;
      }
      case Tok::kString: {
        std::string s;
        while (t_[p_].kind == Tok::kString) s += t_[p_++].text;  // adjacent literals join
        auto e = make(Expr::kLiteral);
        e->value = Value(std::move(s));
        return e;
      }
      case Tok::kName: {
        const std::string n = t.text;
        ++p_;
        auto e = make(Expr::kLiteral);
        if (n == "true" || n == "True") {
          e->value = Value(true);
        } else if (n == "false" || n == "False") {
          e->value = Value(false);
        } else if (n == "none" || n == "None") {
          e->value = Value::none();
        } else {
          e = make(Expr::kName);
          e->name = n;
        }
        return e;
      }
      case Tok::kOp:
        if (accept_op("(")) {
          if (accept_op(")")) return make(Expr::kTuple);
          ExprPtr e = tuple_or_expr();
          expect_op(")");
          return e;
        }
        if (accept_op("[")) {
          auto l = make(Expr::kList);
          while (!accept_op("]")) {
            l->args.push_back(expression());
            if (!accept_op(",")) {
              expect_op("]");
              break;
            }
          }
          return l;
        }
        if (accept_op("{")) {
          auto d = make(Expr::kDict);
          while (!accept_op("}")) {
            d->args.push_back(expression());
            expect_op(":");
            d->args.push_back(expression());
            if (!accept_op(",")) {
              expect_op("}");
              break;
            }
          }
          return d;
        }
        break;
      case Tok::kEnd:
        break;
    }
    error("expected an expression");
  }

  std::vector<Tok> t_;
  size_t p_ = 0;
  std::string where_;
  int line_;
};

class Parser {
 public:
  Parser(std::vector<Piece> pieces, const std::string& origin) : pieces_(std::move(pieces)), origin_(origin) {}

  Body parse_all() {
    std::string end;
    Body b = body({}, &end);
    return b;
  }

 private:
  ExprParser tag_parser(const Piece& p) const { return ExprParser(lex(p.content, where(p)), origin_, p.line); }
  std::string where(const Piece& p) const { return fmt::format("{}: line {}", origin_, p.line); }

  // Parses statements until one of `ends` (a block keyword) and reports which one
  // ended it in *end, leaving that tag's parser in *ended_by.
  Body body(const std::vector<std::string>& ends, std::string* end, std::unique_ptr<ExprParser>* ended_by = nullptr) {
    Body out;
    while (k_ < pieces_.size()) {
      const Piece& p = pieces_[k_++];
      if (p.kind == Piece::kComment) continue;
      if (p.kind == Piece::kText) {
        if (p.content.empty()) continue;
        auto s = std::make_shared<Stmt>(Stmt::kText, p.line);
        s->text = p.content;
        out.push_back(s);
        continue;
      }
      auto ep = std::make_unique<ExprParser>(tag_parser(p));
      if (p.kind == Piece::kExpr) {
        auto s = std::make_shared<Stmt>(Stmt::kOutput, p.line);
        s->expr = ep->tuple_or_expr();
        ep->expect_end();
        out.push_back(s);
        continue;
      }
      const std::string kw = ep->expect_name();
      for (const std::string& e : ends) {
        if (kw == e) {
          *end = kw;
          if (ended_by) *ended_by = std::move(ep);
          return out;
        }
      }
      if (StmtPtr s = statement(kw, *ep, p)) out.push_back(s);
    }
    if (!ends.empty()) fail("{}: missing {{% {} %}} at end of template", origin_, ends.back());
    return out;
  }

  StmtPtr statement(const std::string& kw, ExprParser& ep, const Piece& p) {
    std::string end;
    if (kw == "if") {
      auto s = std::make_shared<Stmt>(Stmt::kIf, p.line);
      ExprPtr cond = ep.expression();
      ep.expect_end();
      for (;;) {
        std::unique_ptr<ExprParser> next;
        Body b = body({"elif", "else", "endif"}, &end, &next);
        s->branches.emplace_back(cond, std::move(b));
        if (end == "endif") break;
        if (end == "else") {
          next->expect_end();
          s->branches.emplace_back(nullptr, body({"endif"}, &end));
          break;
        }
        cond = next->expression();
        next->expect_end();
      }
      return s;
    }
    if (kw == "for") {
      auto s = std::make_shared<Stmt>(Stmt::kFor, p.line);
      do {
        s->targets.push_back(ep.expect_name());
      } while (ep.accept_op(","));
      if (!ep.accept_name("in")) ep.error("expected 'in'");
      s->expr = ep.tuple_or_expr(false);
      if (ep.accept_name("if")) s->loop_filter = ep.expression(false);
      s->recursive = ep.accept_name("recursive");
      ep.expect_end();
      std::unique_ptr<ExprParser> next;
      s->body = body({"else", "endfor"}, &end, &next);
      if (end == "else") s->else_body = body({"endfor"}, &end);
      return s;
    }
    if (kw == "set") {
      std::string first = ep.expect_name();
      if (ep.accept_op(".")) {
        auto s = std::make_shared<Stmt>(Stmt::kSet, p.line);
        auto obj = std::make_shared<Expr>(Expr::kName, p.line);
        obj->name = first;
        s->target_obj = obj;
        s->target_attr = ep.expect_name();
        ep.expect_op("=");
        s->expr = ep.tuple_or_expr();
        ep.expect_end();
        return s;
      }
      std::vector<std::string> names = {first};
      while (ep.accept_op(",")) names.push_back(ep.expect_name());
      if (ep.at_end()) {
        auto s = std::make_shared<Stmt>(Stmt::kSetBlock, p.line);
        s->targets = names;
        s->body = body({"endset"}, &end);
        return s;
      }
      auto s = std::make_shared<Stmt>(Stmt::kSet, p.line);
      s->targets = names;
      ep.expect_op("=");
      s->expr = ep.tuple_or_expr();
      ep.expect_end();
      return s;
    }
    if (kw == "macro") {
      auto s = std::make_shared<Stmt>(Stmt::kMacro, p.line);
      s->name = ep.expect_name();
      ep.expect_op("(");
      while (!ep.accept_op(")")) {
        std::string param = ep.expect_name();
        ExprPtr dflt = ep.accept_op("=") ? ep.expression() : nullptr;
        s->params.emplace_back(std::move(param), dflt);
        if (!ep.accept_op(",")) {
          ep.expect_op(")");
          break;
        }
      }
      ep.expect_end();
      s->body = body({"endmacro"}, &end);
      return s;
    }
    if (kw == "break" || kw == "continue") {
      ep.expect_end();
      return std::make_shared<Stmt>(kw == "break" ? Stmt::kBreak : Stmt::kContinue, p.line);
    }
    if (kw == "generation" || kw == "endgeneration") return nullptr;  // HF marker for assistant masks
    ep.error(fmt::format("unknown or misplaced tag '{}'", kw));
  }

  std::vector<Piece> pieces_;
  size_t k_ = 0;
  const std::string& origin_;
};

}  // namespace

std::shared_ptr<Node> parse_template(const std::string& source, const std::string& origin) {
  auto node = std::make_shared<Node>();
  node->body = Parser(Splitter(source, origin).run(), origin).parse_all();
  return node;
}

}  // namespace anybit::jinja
