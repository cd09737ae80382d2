// Errors that reach the user. Every parser throws anybit::Error with a one-line
// message naming the file and the problem; the CLI prints it and exits non-zero.
#pragma once
#include <stdexcept>
#include <string>
#include <fmt/format.h>

namespace anybit {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

template <typename... Args>
[[noreturn]] inline void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

#define ANYBIT_CHECK(cond, ...)              \
  do {                                       \
    if (!(cond)) ::anybit::fail(__VA_ARGS__); \
  } while (0)

}  // namespace anybit
