// Kernel timings on the GPU (anybit_cuda_bench): the decode GEMV for the Llama-1B and
// Llama-8B matrix shapes against the device-to-device copy bandwidth, and split-KV decode
// attention (bench_attention.cpp). Weights rotate over enough copies to defeat the L2; each figure is the median
// of event-timed launches after a warm-up. Prints a markdown table. QBITS rows count the
// packed bytes (codes + f16 scales) as the traffic.
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#ifdef ANYBIT_WITH_CUBLAS
#include <cublas_v2.h>
#endif

#include "core/dtype.h"
#include "kernels/cuda_kernels.h"
#include "kernels/qbits_cuda_pack.h"
#include "quant/random_qbits.h"
#include "bench_util.h"

using namespace anybit;
using namespace anybit::cuda;
using namespace anybit::cuda::bench;

namespace {

// W4A16 GEMM at the 8B layer shapes for m = 1, 4, 8, 12, 16, 64: the path linear_qbits
// takes (SIMT or tensor-core GEMV, mma_qbits, dequantize + cuBLAS), mma_qbits alone for
// m > 4 (the batched path the m <= 16 GEMV replaces where x fits), against
// cuBLAS on the same shapes with fp16 weights and activations (the baseline).
// Times inside a CUDA graph; "x cuBLAS" is cuBLAS fp16 time / ours.
void bench_w4_gemm(std::mt19937_64& rng) {
  struct Shape {
    const char* name;
    int64_t n, k;
  };
#ifdef ANYBIT_WITH_CUBLAS
  cublasHandle_t hb = nullptr;
  if (cublasCreate(&hb) != CUBLAS_STATUS_SUCCESS) std::printf("cuBLAS unavailable\n");
#endif
  std::printf("\n| W4A16 g128 | shape NxK | m | ours (us) | path | mma_qbits (us) | dequant+cuBLAS (us) | cuBLAS fp16 (us) | x cuBLAS |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  const Shape gshapes[] = {{"8B qkv", 6144, 4096}, {"8B o", 4096, 4096}, {"8B gate_up", 28672, 4096}, {"8B down", 4096, 14336}};
  for (const Shape& s : gshapes) {
    // Both sides rotate over copies of their weights (at least 256 MB in all, more than the
    // 50 MB L2): with one copy the 8B q|k|v, o and down W4 matrices (9-30 MB) stay in L2 and
    // ran up to 20% faster than from HBM (seventeenth session).
    const QbitsGpuPack pack = pack_qbits_for_gpu(*make_random_qweight(s.n, s.k, 4, 128, false, 7));
    std::vector<QbitsDeviceAlloc> wqs;
    for (size_t c = l2_defeating_copies(pack.weight_bytes()); c > 0; --c) wqs.push_back(upload_qbits(pack));
    const QbitsDeviceAlloc& wq = wqs[0];
    void* scratch = nullptr;
    ANYBIT_CUDA_CHECK(cudaMalloc(&scratch, qbits_scratch_bytes(wq.w)));
    const size_t hbytes = size_t(s.n * s.k) * 2;
    const std::vector<void*> whs = device_copies(random_device_bytes(hbytes, DType::F16, rng), hbytes);
    for (int64_t m : {1, 4, 8, 12, 16, 64}) {
      float* x = static_cast<float*>(random_device_bytes(size_t(m * s.k) * 4, DType::F32, rng));
      void* xh = random_device_bytes(size_t(m * s.k) * 2, DType::F16, rng);
      float* y = nullptr;
      void* yh = nullptr;
      ANYBIT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&y), size_t(m * s.n) * 4));
      ANYBIT_CUDA_CHECK(cudaMalloc(&yh, size_t(m * s.n) * 2));
      LinearArgs a;
      a.x = x, a.m = m, a.ldx = s.k, a.y = y, a.ldy = s.n;
      const double ours =
          median_graph_us([&](int j, cudaStream_t st) { linear_qbits(a, wqs[size_t(j) % wqs.size()].w, scratch, st); }, 15);
      double deq = 0, mma = 0;
      if (m > kQbitsGemvMaxRows) {
        reserve_gemm_workspace(m, s.k, s.n, nullptr);
        deq = median_us([&](int) { gemm_qbits(a, wq.w, scratch, nullptr); }, 7);
      }
      if (m > kGemvMaxRows && m <= kMmaMaxRows)
        mma = median_graph_us([&](int j, cudaStream_t st) { mma_qbits(a, wqs[size_t(j) % wqs.size()].w, scratch, st); }, 15);
      double cub = 0;
#ifdef ANYBIT_WITH_CUBLAS
      if (hb) cub = cublas_f16_us(hb, s.n, m, s.k, whs, xh, yh, 15);
#endif
      const char* path = linear_qbits_path(m, wq.w);
      std::printf("| W4A16 g128 | %s %lldx%lld | %lld | %.1f | %s | %s | %s | %.1f | %.2f |\n", s.name, (long long)s.n,
                  (long long)s.k, (long long)m, ours, path, mma > 0 ? std::to_string(mma).substr(0, 6).c_str() : "-",
                  deq > 0 ? std::to_string(deq).substr(0, 6).c_str() : "-", cub, cub > 0 ? cub / ours : 0.0);
      cudaFree(x);
      cudaFree(xh);
      cudaFree(y);
      cudaFree(yh);
    }
    for (void* d : whs) cudaFree(d);
    cudaFree(scratch);
    for (auto& w : wqs) free_qbits(w);
  }
#ifdef ANYBIT_WITH_CUBLAS
  if (hb) cublasDestroy(hb);
#endif
}

}  // namespace

// `anybit_cuda_bench attention|a8|sampling|gemv|qgemv|w4gemm` runs only that section.
int main(int argc, char** argv) {
  if (device_count() == 0) {
    std::printf("no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop{};
  ANYBIT_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::mt19937_64 rng(1);
  std::printf("device: %s, %d SMs, L2 %d MB\n\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);

  const size_t copy_bytes = size_t(1) << 30;
  void *src = nullptr, *dst = nullptr;
  ANYBIT_CUDA_CHECK(cudaMalloc(&src, copy_bytes));
  ANYBIT_CUDA_CHECK(cudaMalloc(&dst, copy_bytes));
  ANYBIT_CUDA_CHECK(cudaMemset(src, 0x3c, copy_bytes));
  const double copy_us = median_us([&](int) { cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice); }, 3);
  const double copy_gbs = 2.0 * double(copy_bytes) / copy_us / 1e3;
  cudaFree(src);
  cudaFree(dst);

  std::printf("| kernel | shape | median us | GB/s | %% of copy |\n|---|---|---|---|---|\n");
  std::printf("| D2D copy | 1 GiB | %.1f | %.0f | 100 |\n", copy_us, copy_gbs);
  const std::string only = argc > 1 ? argv[1] : "";
  if (only == "w4gemm") {
    bench_w4_gemm(rng);
    return 0;
  }
  if (only == "attention") {
    bench_attention(copy_gbs, rng);
    return 0;
  }
  if (only == "a8" || only == "sampling") {
    if (only == "a8") bench_a8(rng);
    else bench_sampling(rng);
    return 0;
  }

  struct Shape {
    const char* name;
    int64_t n, k;
    InputOp op;
  };
  const Shape shapes[] = {
      {"1B qkv (norm)", 3072, 2048, InputOp::RmsNorm}, {"1B o", 2048, 2048, InputOp::None},
      {"1B gate_up (norm)", 16384, 2048, InputOp::RmsNorm}, {"1B down (silu)", 2048, 8192, InputOp::SiluMul},
      {"1B down (plain x, as in the model)", 2048, 8192, InputOp::None},
      {"1B lm_head", 8192, 2048, InputOp::RmsNorm}, {"8B qkv", 6144, 4096, InputOp::RmsNorm},
      {"8B gate_up", 28672, 4096, InputOp::RmsNorm}, {"8B down", 4096, 14336, InputOp::SiluMul},
  };
  for (DType dt : {DType::BF16, DType::F16}) {
    if (only == "qgemv") break;
    for (const Shape& s : shapes) {
        const size_t wbytes = size_t(s.n * s.k) * 2;
        const std::vector<void*> ws = device_copies(random_device_bytes(wbytes, dt, rng), wbytes);
        for (int64_t m : {1, 4}) {
        const int64_t ldx = s.op == InputOp::SiluMul ? 2 * s.k : s.k;
        float *x = nullptr, *y = nullptr, *nw = nullptr;
        x = static_cast<float*>(random_device_bytes(size_t(m * ldx) * 4, DType::F32, rng));
        nw = static_cast<float*>(random_device_bytes(size_t(s.k) * 4, DType::F32, rng));
        ANYBIT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&y), size_t(m * s.n) * 4));
        LinearArgs a;
        a.x = x, a.m = m, a.ldx = ldx, a.op = s.op, a.norm_w = nw, a.y = y, a.ldy = s.n;
        const double us = median_us(
            [&](int i) {
              gemv(a, DeviceWeight{dt, s.n, s.k, ws[size_t(i) % ws.size()]}, nullptr);
            },
            15);
        const double gbs = double(wbytes) / us / 1e3;
        std::printf("| gemv %s m=%lld | %s %lldx%lld | %.1f | %.0f | %.0f |\n", std::string(dtype_name(dt)).c_str(),
                    (long long)m, s.name, (long long)s.n, (long long)s.k, us, gbs, 100.0 * gbs / copy_gbs);
        cudaFree(x);
        cudaFree(y);
        cudaFree(nw);
        }
        for (void* p : ws) cudaFree(p);
      }
  }

  if (only == "gemv") return 0;

  // QBITS W{4,2,8}A16 GEMV at the Llama-3-8B decode shapes (group 128, symmetric), the ops
  // the model runs (down takes the SwiGLU output of the gate_up epilogue); timed inside a
  // CUDA graph like the model's decode step ("graph" column: 20 launches in one graph).
  const Shape qshapes[] = {
      {"8B qkv (norm)", 6144, 4096, InputOp::RmsNorm}, {"8B o", 4096, 4096, InputOp::None},
      {"8B gate_up (norm)", 28672, 4096, InputOp::RmsNorm}, {"8B down", 4096, 14336, InputOp::None},
      {"8B lm_head (norm)", 8192, 4096, InputOp::RmsNorm},
  };
  // ANYBIT_BENCH_QSHAPE=name (a part of a shape's name): only that W4 shape, for profiling.
  const char* only_shape = std::getenv("ANYBIT_BENCH_QSHAPE");
  for (int bits : {4, 2, 8}) {
    for (const Shape& s : qshapes) {
      if (only_shape && (bits != 4 || !std::strstr(s.name, only_shape))) continue;
      const QbitsGpuPack pack = pack_qbits_for_gpu(*make_random_qweight(s.n, s.k, bits, 128, false, 7));
      const size_t wbytes = pack.weight_bytes();
      std::vector<QbitsDeviceAlloc> ws;
      for (size_t c = l2_defeating_copies(wbytes); c > 0; --c) ws.push_back(upload_qbits(pack));
      for (int64_t m : {1, 4}) {
        const int64_t ldx = s.op == InputOp::SiluMul ? 2 * s.k : s.k;
        float* x = static_cast<float*>(random_device_bytes(size_t(m * ldx) * 4, DType::F32, rng));
        float* nw = static_cast<float*>(random_device_bytes(size_t(s.k) * 4, DType::F32, rng));
        float* y = nullptr;
        ANYBIT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&y), size_t(m * s.n) * 4));
        LinearArgs a;
        a.x = x, a.m = m, a.ldx = ldx, a.op = s.op, a.norm_w = nw, a.y = y, a.ldy = s.n;
        const double us =
            median_graph_us([&](int i, cudaStream_t st) { gemv_qbits(a, ws[size_t(i) % ws.size()].w, st); }, 15);
        const double gbs = double(wbytes) / us / 1e3;
        std::printf("| gemv_qbits w%da16 g128 m=%lld | %s %lldx%lld | %.1f | %.0f | %.0f |\n", bits, (long long)m, s.name,
                    (long long)s.n, (long long)s.k, us, gbs, 100.0 * gbs / copy_gbs);
        cudaFree(x);
        cudaFree(y);
        cudaFree(nw);
      }
      for (auto& w : ws) free_qbits(w);
    }
  }
  if (only_shape) return 0;
  // The four GEMVs of an 8B W4 layer back to back (q|k|v, o, gate|up with SwiGLU pairs,
  // down), two layers' weights alternating (230 MB, more than L2), as the decode step runs
  // them: what the transitions between kernels cost, which the per-matrix figures hide.
  {
    const Shape layer[] = {qshapes[0], qshapes[1], qshapes[2], qshapes[3]};
    std::vector<QbitsDeviceAlloc> ws;
    size_t layer_bytes = 0;
    for (int copy = 0; copy < 2; ++copy)
      for (const Shape& s : layer) {
        const QbitsGpuPack pack = pack_qbits_for_gpu(*make_random_qweight(s.n, s.k, 4, 128, false, 11 + copy));
        if (copy == 0) layer_bytes += pack.weight_bytes();
        ws.push_back(upload_qbits(pack));
      }
    float* xb = static_cast<float*>(random_device_bytes(size_t(28672) * 4, DType::F32, rng));
    float* nw = static_cast<float*>(random_device_bytes(size_t(4096) * 4, DType::F32, rng));
    float *qkv = nullptr, *act = nullptr;
    ANYBIT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&qkv), size_t(6144) * 4));
    ANYBIT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&act), size_t(14336) * 4));
    const double us = median_graph_us(
        [&](int j, cudaStream_t st) {
          const QbitsDeviceAlloc* w = &ws[size_t(j % 2) * 4];
          LinearArgs a;  // x (the residual stream) -> RMSNorm -> q|k|v
          a.x = xb, a.m = 1, a.ldx = 4096, a.op = InputOp::RmsNorm, a.norm_w = nw, a.y = qkv, a.ldy = 6144;
          gemv_qbits(a, w[0].w, st);
          LinearArgs o;  // attention output (here: q) -> o, added to the residual stream
          o.x = qkv, o.m = 1, o.ldx = 4096, o.y = xb, o.ldy = 4096, o.accumulate = true;
          gemv_qbits(o, w[1].w, st);
          LinearArgs g;  // RMSNorm -> gate|up with SiLU(gate)*up written
          g.x = xb, g.m = 1, g.ldx = 4096, g.op = InputOp::RmsNorm, g.norm_w = nw, g.y = act, g.ldy = 28672;
          g.silu_pairs = true;
          gemv_qbits(g, w[2].w, st);
          LinearArgs d;  // down, added to the residual stream
          d.x = act, d.m = 1, d.ldx = 14336, d.y = xb, d.ldy = 4096, d.accumulate = true;
          gemv_qbits(d, w[3].w, st);
        },
        15);
    const double gbs = double(layer_bytes) / us / 1e3;
    std::printf("| gemv_qbits w4a16 g128 m=1 | 8B layer: qkv, o, gate_up, down | %.1f | %.0f | %.0f |\n", us, gbs,
                100.0 * gbs / copy_gbs);
    cudaFree(xb);
    cudaFree(nw);
    cudaFree(qkv);
    cudaFree(act);
    for (auto& w : ws) free_qbits(w);
  }
  if (only == "qgemv") return 0;

  bench_w4_gemm(rng);
  bench_attention(copy_gbs, rng);
  ANYBIT_CUDA_CHECK(cudaDeviceSynchronize());
  return 0;
}
