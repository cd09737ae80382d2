// Timing helpers of anybit_cuda_bench (event-timed medians, graph replay, random device data).
#pragma once
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <cstring>
#include <random>
#include <vector>

#ifdef ANYBIT_WITH_CUBLAS
#include <cublas_v2.h>
#include <cuda_fp16.h>
#endif

#include "core/dtype.h"
#include "kernels/cuda_kernels.h"

namespace anybit::cuda::bench {

constexpr int kInner = 20;  // launches per timed sample

// Median over `reps` samples of the per-launch time, each sample timed with events on
// stream `st` around `sample(i)`, which enqueues kInner launches.
template <typename F>
inline double median_samples_us(int reps, cudaStream_t st, F&& sample) {
  cudaEvent_t a, b;
  ANYBIT_CUDA_CHECK(cudaEventCreate(&a));
  ANYBIT_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    ANYBIT_CUDA_CHECK(cudaEventRecord(a, st));
    sample(i);
    ANYBIT_CUDA_CHECK(cudaEventRecord(b, st));
    ANYBIT_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    ANYBIT_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(double(ms) * 1000.0 / kInner);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// kInner back-to-back launches per sample (so launch gaps look like they do inside a CUDA
// graph, not like an isolated launch between events).
template <typename F>
inline double median_us(F&& launch, int reps) {
  for (int i = 0; i < 5; ++i) launch(i);
  return median_samples_us(reps, nullptr, [&](int i) {
    for (int j = 0; j < kInner; ++j) launch(i * kInner + j);
  });
}

// The same with the kInner launches captured into one CUDA graph (as the model's decode
// step runs them): no host launch cost, only the kernels and the gaps between them.
template <typename F>
inline double median_graph_us(F&& launch, int reps) {
  cudaStream_t st;
  ANYBIT_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaGraph_t g = nullptr;
  cudaGraphExec_t ge = nullptr;
  ANYBIT_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  for (int j = 0; j < kInner; ++j) launch(j, st);
  ANYBIT_CUDA_CHECK(cudaStreamEndCapture(st, &g));
  ANYBIT_CUDA_CHECK(cudaGraphInstantiate(&ge, g, 0));
  for (int i = 0; i < 3; ++i) ANYBIT_CUDA_CHECK(cudaGraphLaunch(ge, st));
  const double us = median_samples_us(reps, st, [&](int) { ANYBIT_CUDA_CHECK(cudaGraphLaunch(ge, st)); });
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  cudaStreamDestroy(st);
  return us;
}

inline void* random_device_bytes(size_t bytes, DType t, std::mt19937_64& rng) {
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<uint8_t> h(bytes);
  const size_t es = t == DType::F32 ? 4 : 2;
  for (size_t i = 0; i + es <= bytes; i += es) {
    const float v = nd(rng);
    if (es == 4) std::memcpy(&h[i], &v, 4);
    else {
      const uint16_t b = t == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
      std::memcpy(&h[i], &b, 2);
    }
  }
  void* d = nullptr;
  ANYBIT_CUDA_CHECK(cudaMalloc(&d, bytes));
  ANYBIT_CUDA_CHECK(cudaMemcpy(d, h.data(), bytes, cudaMemcpyHostToDevice));
  return d;
}

// Copies of a weight that the timed launches rotate over so that none runs from the 50 MB L2:
// at least 256 MB in all, and at least 2.
inline size_t l2_defeating_copies(size_t bytes) { return std::max<size_t>(2, (size_t(256) << 20) / bytes + 1); }

// `first` (bytes of device memory) and l2_defeating_copies(bytes) - 1 device copies of it.
inline std::vector<void*> device_copies(void* first, size_t bytes) {
  std::vector<void*> ws{first};
  for (size_t c = l2_defeating_copies(bytes); c > 1; --c) {
    void* d = nullptr;
    ANYBIT_CUDA_CHECK(cudaMalloc(&d, bytes));
    ANYBIT_CUDA_CHECK(cudaMemcpy(d, first, bytes, cudaMemcpyDeviceToDevice));
    ws.push_back(d);
  }
  return ws;
}

#ifdef ANYBIT_WITH_CUBLAS
// The baseline: cuBLAS fp16 y[m][n] = x[m][k] . W[n][k]^T (fp16 weights, activations,
// output and compute), per-launch µs inside a CUDA graph.
// Launch j reads weight copy whs[j % whs.size()]: pass enough copies to defeat the L2.
inline double cublas_f16_us(cublasHandle_t hb, int64_t n, int64_t m, int64_t k, const std::vector<void*>& whs,
                            const void* xh, void* yh, int reps) {
  const __half one = __float2half(1.0f), zero = __float2half(0.0f);
  return median_graph_us(
      [&](int j, cudaStream_t st) {
        cublasSetStream(hb, st);
        const void* wh = whs[size_t(j) % whs.size()];
        cublasGemmEx(hb, CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(m), int(k), &one, wh, CUDA_R_16F, int(k), xh, CUDA_R_16F,
                     int(k), &zero, yh, CUDA_R_16F, int(n), CUBLAS_COMPUTE_16F, CUBLAS_GEMM_DEFAULT);
      },
      reps);
}
#endif

// Runs the attention section (bench_attention.cpp).
void bench_attention(double copy_gbs, std::mt19937_64& rng);
// The W*A8 and sampling sections (bench_a8_sampling.cpp).
void bench_a8(std::mt19937_64& rng);
void bench_sampling(std::mt19937_64& rng);

}  // namespace anybit::cuda::bench
