// Syntax tree of the Jinja subset (internal to jinja_*.cpp).
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja.h"

namespace anybit::jinja {

struct Expr;
using ExprPtr = std::shared_ptr<Expr>;

struct Expr {
  enum Kind {
    kLiteral,  // value
    kName,     // name
    kList,     // args = items
    kTuple,    // args = items
    kDict,     // args = k0, v0, k1, v1, ...
    kAttr,     // args[0].name
    kIndex,    // args[0][args[1]]
    kSlice,    // args[0][args[1]:args[2]:args[3]] (entries may be null)
    kCall,     // args[0](args[1..], kwargs)
    kFilter,   // args[0] | name(args[1..], kwargs)
    kTest,     // args[0] is [not] name(args[1..])
    kUnary,    // name in {"not", "-", "+"}, args[0]
    kBinary,   // args[0] name args[1]
    kCond,     // args[0] if args[1] else args[2] (args[2] may be null)
  } kind;
  Value value;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  bool negate = false;
  int line = 0;

  Expr(Kind k, int ln) : kind(k), line(ln) {}
};

struct Stmt;
using StmtPtr = std::shared_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  enum Kind { kText, kOutput, kIf, kFor, kSet, kSetBlock, kMacro, kBreak, kContinue } kind;
  int line = 0;
  std::string text;                               // kText
  ExprPtr expr;                                   // kOutput value, kSet value, kFor iterable
  std::vector<std::pair<ExprPtr, Body>> branches;  // kIf: (condition or null for else, body)
  std::vector<std::string> targets;               // kFor loop variables, kSet/kSetBlock names
  ExprPtr target_obj;                             // kSet of "ns.attr": the object expression
  std::string target_attr;
  ExprPtr loop_filter;                            // kFor "... if cond"
  bool recursive = false;
  Body body, else_body;
  std::string name;                               // kMacro
  std::vector<std::pair<std::string, ExprPtr>> params;

  Stmt(Kind k, int ln) : kind(k), line(ln) {}
};

struct Node {
  Body body;
};

std::shared_ptr<Node> parse_template(const std::string& source, const std::string& origin);

// Filters, tests and methods (jinja_builtins.cpp). `where` prefixes error messages.
Value apply_filter(const std::string& name, Value input, std::vector<Value>& args, KwArgs& kwargs,
                   const std::string& where);
bool apply_test(const std::string& name, const Value& input, std::vector<Value>& args, const std::string& where);
Value call_method(const Value& obj, const std::string& name, std::vector<Value>& args, KwArgs& kwargs,
                  const std::string& where);
// Python-style sequence operations shared by the evaluator and the builtins.
Value get_item(const Value& obj, const Value& key);
Value get_attr(const Value& obj, const std::string& name);
List iterate(const Value& v, const std::string& where);
int64_t length(const Value& v);

}  // namespace anybit::jinja
