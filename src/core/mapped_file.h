// A whole file mapped read-only into memory. Parsers bound-check every offset
// against size() before reading, so a truncated file is an error, not a crash.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace anybit {

class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Reads a whole (small) text file; throws anybit::Error naming the file.
std::string read_text_file(const std::string& path);

}  // namespace anybit
