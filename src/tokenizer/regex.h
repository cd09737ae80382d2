// PCRE2 wrapper for the pre-tokenizer patterns (UTF + UCP so \p{L}, \s follow
// Unicode as Oniguruma does in Hugging Face tokenizers).
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace anybit {

class Regex {
 public:
  // Throws anybit::Error "<origin>: invalid regex ...".
  Regex(const std::string& pattern, const std::string& origin);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Non-overlapping matches, left to right, as (begin, end) byte offsets. Empty
  // matches are skipped. Invalid UTF-8 bytes never match (they are left in the gaps).
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;
  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

}  // namespace anybit
