#include "core/progress.h"

#include <cstdio>

namespace anybit {

void ProgressBar::update(double done, double total, const std::string& unit) {
  if (!enabled_ || finished_ || total <= 0) return;
  const auto now = std::chrono::steady_clock::now();
  if (drawn_ && done < total && now - last_ < std::chrono::milliseconds(100)) return;
  last_ = now;
  drawn_ = true;
  const double f = done / total > 1.0 ? 1.0 : done / total;
  const int width = 30, filled = int(f * width);
  std::string bar(size_t(filled), '#');
  bar.append(size_t(width - filled), '.');
  std::fprintf(stderr, "\r%s [%s] %5.1f%% %.0f/%.0f%s", label_.c_str(), bar.c_str(), f * 100.0, done, total,
               unit.c_str());
  std::fflush(stderr);
}

void ProgressBar::finish() {
  if (drawn_ && !finished_) std::fputc('\n', stderr);
  finished_ = true;
}

}  // namespace anybit
