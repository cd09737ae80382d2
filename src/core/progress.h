// A one-line progress bar on stderr, redrawn at most ~10 times a second.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace anybit {

class ProgressBar {
 public:
  explicit ProgressBar(std::string label, bool enabled = true) : label_(std::move(label)), enabled_(enabled) {}
  ~ProgressBar() { finish(); }
  void update(double done, double total, const std::string& unit = "");
  void finish();

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  bool finished_ = false;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace anybit
