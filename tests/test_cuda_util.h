// Helpers for the CUDA tests: skip without a device, device buffers, poisoning.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <vector>

#include "runtime/device.h"

#define ANYBIT_REQUIRE_CUDA()                                                                 \
  do {                                                                                        \
    if (!::anybit::cuda_available())                                                          \
      GTEST_SKIP() << "no CUDA device visible (or built without CUDA): GPU test skipped";    \
  } while (0)

namespace anybit::test {

// n normal draws with standard deviation sd (fresh inputs for a kernel test).
inline std::vector<float> randn(std::mt19937_64& rng, size_t n, float sd = 1.0f) {
  std::normal_distribution<float> nd(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

}  // namespace anybit::test

#ifdef ANYBIT_WITH_CUDA
#include <cuda_runtime_api.h>

#include "kernels/cuda_kernels.h"

namespace anybit::test {

inline uint64_t cuda_test_seed() {
  if (const char* s = std::getenv("ANYBIT_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  std::random_device rd;
  return (uint64_t(rd()) << 32) | rd();
}

// A device array of n T's; poison() fills it with 0xFF bytes (NaN for floats).
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n) : n_(n) { ANYBIT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), (n ? n : 1) * sizeof(T))); }
  explicit DeviceArray(const std::vector<T>& v) : DeviceArray(v.size()) { upload(v); }
  ~DeviceArray() { cudaFree(p_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  T* get() const { return p_; }
  size_t size() const { return n_; }
  void upload(const std::vector<T>& v) {
    ANYBIT_CUDA_CHECK(cudaMemcpy(p_, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  void upload_bytes(const void* src, size_t bytes) {
    ANYBIT_CUDA_CHECK(cudaMemcpy(p_, src, bytes, cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    ANYBIT_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<T> v(n_);
    ANYBIT_CUDA_CHECK(cudaMemcpy(v.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
  }
  void poison() { ANYBIT_CUDA_CHECK(cudaMemset(p_, 0xff, n_ * sizeof(T))); }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace anybit::test
#endif
