// Helpers shared by the tests: temp folders, file writing, running the CLI, fresh random data.
#pragma once
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace anybit::test {

// A fresh directory under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() / ("anybit-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs the anybit CLI with `args` (a shell-quoted string).
inline CommandResult run_cli(const std::string& args, const std::string& stdin_text = "") {
  TempDir tmp;
  const std::string out = tmp.file("out"), err = tmp.file("err"), in = tmp.file("in");
  write_file(in, stdin_text);
  const std::string cmd = std::string(ANYBIT_BINARY) + " " + args + " <" + in + " >" + out + " 2>" + err;
  const int rc = std::system(cmd.c_str());
  auto slurp = [](const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, slurp(out), slurp(err)};
}

// One generator per test binary, seeded from the device: every run draws fresh data.
inline std::mt19937& rng() {
  static std::mt19937 g(std::random_device{}());
  return g;
}

// n draws of N(mean, sd^2).
inline std::vector<float> normal(size_t n, float sd = 1.0f, float mean = 0.0f) {
  std::normal_distribution<float> d(mean, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng());
  return v;
}

}  // namespace anybit::test
