// Helpers shared by the GGUF tests: a scratch directory, a byte builder for
// hand-made (often malformed) files, and an "expect anybit::Error" check.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace anybit::gguf_test {

// A fresh directory under the system temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("anybit_gguf_" + std::to_string(::getpid()) + "_" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

struct Bytes {
  std::vector<uint8_t> b;
  template <typename T>
  Bytes& put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof(T));
    return *this;
  }
  Bytes& u32(uint32_t v) { return put(v); }
  Bytes& u64(uint64_t v) { return put(v); }
  Bytes& str(const std::string& s) {
    u64(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& pad(size_t alignment) {
    while (b.size() % alignment) b.push_back(0);
    return *this;
  }
  Bytes& zeros(size_t n) {
    b.insert(b.end(), n, 0);
    return *this;
  }
  void save(const std::string& path) const {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
  }
};

// Runs fn, which must throw anybit::Error whose message starts with "<path>: " and
// contains `problem`.
inline void expect_file_error(const std::string& path, const std::string& problem, const std::function<void()>& fn) {
  try {
    fn();
    ADD_FAILURE() << "no error for " << path << " (expected '" << problem << "')";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
    EXPECT_NE(msg.find(problem), std::string::npos) << "message: " << msg << "\nexpected to contain: " << problem;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "multi-line message: " << msg;
  }
}

inline std::vector<uint8_t> random_bytes(size_t n, std::mt19937& rng) {
  std::vector<uint8_t> v(n);
  for (auto& x : v) x = uint8_t(rng());
  return v;
}

// `nblocks` random GGUF blocks of `t` (Q8_0, Q4_0 or a K-quant): random code and sub-scale
// bytes, with the f16 block scales set so that no value exceeds about `amax` (so a model
// built from them keeps finite, moderate activations, also through an f16 KV cache).
inline std::vector<uint8_t> random_gguf_blocks(DType t, int64_t nblocks, float amax, std::mt19937_64& rng) {
  const size_t bb = dtype_row_bytes(t, dtype_block_size(t));
  std::vector<uint8_t> v(bb * size_t(nblocks));
  for (auto& b : v) b = uint8_t(rng());
  std::uniform_real_distribution<float> u(0.5f, 1.0f);
  auto put = [](uint8_t* p, float x) {
    const uint16_t h = f32_to_f16(x);
    std::memcpy(p, &h, 2);
  };
  for (int64_t i = 0; i < nblocks; ++i) {
    uint8_t* b = v.data() + bb * size_t(i);
    const float r = u(rng);
    switch (t) {
      case DType::Q8_0: put(b, r * amax / 127.0f); break;
      case DType::Q4_0: put(b, r * amax / 8.0f); break;
      case DType::Q4_K: put(b, r * amax / 945.0f), put(b + 2, 7.0f * r * amax / 945.0f); break;
      case DType::Q5_K: put(b, r * amax / 1953.0f), put(b + 2, 15.0f * r * amax / 1953.0f); break;
      case DType::Q6_K: put(b + 208, r * amax / 4096.0f); break;
      case DType::Q2_K: put(b + 80, r * amax / 45.0f), put(b + 82, 1.5f * r * amax / 45.0f); break;
      case DType::Q3_K: put(b + 108, r * amax / 128.0f); break;
      default: fail("random_gguf_blocks: {} is not a GGUF block type", dtype_name(t));
    }
  }
  return v;
}

}  // namespace anybit::gguf_test
