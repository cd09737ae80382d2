// anybit_cuda_bench sections `a8` and `sampling`.
// - a8: the W*A8 integer tensor-core path (a8_qbits, act_bits 8) at the Llama-3-8B layer
//   shapes for m = 1 .. 2048, against the same weights run W*A16 (linear_qbits: GEMV, mma_qbits
//   or dequantize + bf16 GEMM) and cuBLAS fp16. Times inside a CUDA graph; the weights are
//   one copy (at m >= 16 the work is compute and L2 bound anyway).
// - sampling: sample_rows (top-k 40, top-p 0.9, T 0.8, repetition penalty over 64 ids) on
//   a Llama-3 vocabulary (128,256) against the host Sampler on the same logits.
#include <cuda_fp16.h>

#include <chrono>
#include <cstdio>
#include <vector>

#ifdef ANYBIT_WITH_CUBLAS
#include <cublas_v2.h>
#endif

#include "bench_util.h"
#include "kernels/qbits_cuda_pack.h"
#include "kernels/sampling_cuda.h"
#include "quant/random_qbits.h"
#include "runtime/sampler.h"

namespace anybit::cuda::bench {

void bench_a8(std::mt19937_64& rng) {
#ifdef ANYBIT_WITH_CUBLAS
  cublasHandle_t hb = nullptr;
  if (cublasCreate(&hb) != CUBLAS_STATUS_SUCCESS) hb = nullptr;
#endif
  struct Shape {
    const char* name;
    int64_t n, k;
  };
  const Shape shapes[] = {{"8B qkv", 6144, 4096}, {"8B o", 4096, 4096}, {"8B gate_up", 28672, 4096}, {"8B down", 4096, 14336}};
  std::printf("\n| W*A8 g128 | shape NxK | m | a8 (us) | same weights A16 (us) | cuBLAS fp16 (us) | A16 / a8 | cuBLAS / a8 |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (int bits : {8, 4}) {
    for (const Shape& s : shapes) {
      auto qw = make_random_qweight(s.n, s.k, bits, 128, false, 7);
      const QbitsGpuPack p16 = pack_qbits_for_gpu(*qw);
      qw->act_bits = 8;
      const QbitsGpuPack p8 = pack_qbits_for_gpu(*qw);
      QbitsDeviceAlloc w8 = upload_qbits(p8), w16 = upload_qbits(p16);
      void* scratch = nullptr;
      const size_t sb = std::max(qbits_scratch_bytes(w8.w), qbits_scratch_bytes(w16.w));
      ANYBIT_CUDA_CHECK(cudaMalloc(&scratch, sb));
      void* wh = random_device_bytes(size_t(s.n * s.k) * 2, DType::F16, rng);
      for (int64_t m : {1, 16, 64, 512, 2048}) {
        float* x = static_cast<float*>(random_device_bytes(size_t(m * s.k) * 4, DType::F32, rng));
        void* xh = random_device_bytes(size_t(m * s.k) * 2, DType::F16, rng);
        float* y = nullptr;
        void* yh = nullptr;
        ANYBIT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&y), size_t(m * s.n) * 4));
        ANYBIT_CUDA_CHECK(cudaMalloc(&yh, size_t(m * s.n) * 2));
        LinearArgs a;
        a.x = x, a.m = m, a.ldx = s.k, a.y = y, a.ldy = s.n;
        reserve_gemm_workspace(m, s.k, s.n, nullptr);
        const int reps = m >= 512 ? 5 : 11;
        const double a8 = median_graph_us([&](int, cudaStream_t st) { linear_qbits(a, w8.w, scratch, st); }, reps);
        const double a16 = median_graph_us([&](int, cudaStream_t st) { linear_qbits(a, w16.w, scratch, st); }, reps);
        double cub = 0;
#ifdef ANYBIT_WITH_CUBLAS
        if (hb) cub = cublas_f16_us(hb, s.n, m, s.k, {wh}, xh, yh, reps);
#endif
        std::printf("| W%dA8 | %s %lldx%lld | %lld | %.1f | %.1f | %.1f | %.2f | %.2f |\n", bits, s.name, (long long)s.n,
                    (long long)s.k, (long long)m, a8, a16, cub, a16 / a8, cub > 0 ? cub / a8 : 0.0);
        cudaFree(x);
        cudaFree(xh);
        cudaFree(y);
        cudaFree(yh);
      }
      cudaFree(wh);
      cudaFree(scratch);
      free_qbits(w8);
      free_qbits(w16);
    }
  }
#ifdef ANYBIT_WITH_CUBLAS
  if (hb) cublasDestroy(hb);
#endif
}

void bench_sampling(std::mt19937_64& rng) {
  const int64_t V = 128256;
  std::printf("\n| sampling, vocab %lld, top-k 40, top-p 0.9, T 0.8, penalty 1.1 | rows | GPU sample_rows (us) | host Sampler (us) | host / GPU |\n",
              (long long)V);
  std::printf("|---|---|---|---|---|\n");
  SamplingParams sp;
  sp.temperature = 0.8f, sp.top_k = 40, sp.top_p = 0.9f, sp.repetition_penalty = 1.1f;
  for (int64_t n : {1, 16}) {
    std::vector<float> logits(size_t(n * V));
    std::normal_distribution<float> nd(0.0f, 3.0f);
    for (auto& v : logits) v = nd(rng);
    std::vector<int32_t> history;
    for (int i = 0; i < 64; ++i) history.push_back(int32_t(rng() % uint64_t(V)));
    Sampler host(sp);
    std::vector<SampleRow> rows(static_cast<size_t>(n));
    std::vector<int32_t> pen;
    for (auto& r : rows) {
      const SampleRequest q = host.request(history, V);
      r.temperature = sp.temperature, r.top_k = sp.top_k, r.top_p = sp.top_p, r.repetition_penalty = sp.repetition_penalty;
      r.u = q.u, r.penalty_begin = int32_t(pen.size());
      pen.insert(pen.end(), q.penalty_ids.begin(), q.penalty_ids.end());
      r.penalty_end = int32_t(pen.size());
    }
    float *dl = nullptr, *work = nullptr;
    int32_t *dpen = nullptr, *out = nullptr;
    void* drows = nullptr;
    ANYBIT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&dl), logits.size() * 4));
    ANYBIT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&work), size_t(n * sample_work_ld(V)) * 4));
    ANYBIT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&dpen), pen.size() * 4));
    ANYBIT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&out), size_t(n) * 4));
    ANYBIT_CUDA_CHECK(cudaMalloc(&drows, rows.size() * sizeof(SampleRow)));
    ANYBIT_CUDA_CHECK(cudaMemcpy(dl, logits.data(), logits.size() * 4, cudaMemcpyHostToDevice));
    ANYBIT_CUDA_CHECK(cudaMemcpy(dpen, pen.data(), pen.size() * 4, cudaMemcpyHostToDevice));
    ANYBIT_CUDA_CHECK(cudaMemcpy(drows, rows.data(), rows.size() * sizeof(SampleRow), cudaMemcpyHostToDevice));
    SampleArgs a;
    a.logits = dl, a.ldl = V, a.vocab = V, a.n_rows = n, a.rows = static_cast<const SampleRow*>(drows);
    a.penalty_ids = dpen, a.work = work, a.out = out;
    const double gpu = median_graph_us([&](int, cudaStream_t st) { sample_rows(a, st); }, 11);
    std::vector<double> ts;
    for (int rep = 0; rep < 7; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < n; ++i) (void)host.sample(logits.data() + i * V, V, history);
      ts.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ts.begin(), ts.end());
    std::printf("| | %lld | %.1f | %.1f | %.1f |\n", (long long)n, gpu, ts[ts.size() / 2], ts[ts.size() / 2] / gpu);
    cudaFree(dl), cudaFree(work), cudaFree(dpen), cudaFree(out), cudaFree(drows);
  }
}

}  // namespace anybit::cuda::bench
