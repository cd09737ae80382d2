// Decode attention at long context (anybit_cuda_bench's attention section): the Llama-3-8B
// head shape (32 query / 8 kv heads, head_dim 128), one layer of a paged cache with scattered
// blocks, batch 1 and 16, contexts 4k / 32k / 128k, for each cache dtype and kernel. Times
// are medians of CUDA-graph replays of 20 launches (as the model's decode step runs them);
// GB/s counts the K and V bytes of the context (int8: codes and scales). bench/cuda/sdpa_decode.py measures PyTorch's
// SDPA on the same shapes for the comparison in docs/PERFORMANCE.md.
#include <cstdio>
#include <vector>

#include "bench_util.h"

namespace anybit::cuda::bench {

namespace {

// bytes of device memory filled with N(0, 1) values of dtype t: a random 64 MiB pattern
// repeated (filling tens of GiB from the host would take minutes).
void* fill_device(size_t bytes, DType t, std::mt19937_64& rng) {
  const size_t pattern = std::min(bytes, size_t(64) << 20);
  void* src = random_device_bytes(pattern, t, rng);
  void* d = nullptr;
  ANYBIT_CUDA_CHECK(cudaMalloc(&d, bytes));
  for (size_t off = 0; off < bytes; off += pattern)
    ANYBIT_CUDA_CHECK(cudaMemcpy(static_cast<char*>(d) + off, src, std::min(pattern, bytes - off),
                                 cudaMemcpyDeviceToDevice));
  cudaFree(src);
  return d;
}

}  // namespace

void bench_attention(double copy_gbs, std::mt19937_64& rng) {
  std::printf("\n| attention decode (32/8 heads, hd 128) | cache, kernel | ctx | batch | splits | median us | GB/s | %% of copy |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  const int64_t heads = 32, kvh = 8, hd = 128, bs = 16;
  for (int64_t ctx : {4096, 32768, 131072})
    for (int64_t batch : {1, 16})
      for (DType dt : {DType::F16, DType::I8, DType::F32}) {
        const int64_t per_seq = ctx / bs, blocks = per_seq * batch;
        KVLayout kv;
        kv.dtype = dt, kv.n_layers = 1, kv.n_kv_heads = kvh, kv.head_dim = hd, kv.block_size = bs;
        const size_t kv_bytes = size_t(blocks * kv.block_bytes());
        // int8 caches: random codes and scales; the values do not change the work.
        kv.base = fill_device(kv_bytes, dt == DType::I8 ? DType::F16 : dt, rng);
        // Scattered blocks: sequence b's i-th block is a stride-7 walk over the pool.
        std::vector<int32_t> bt(static_cast<size_t>(blocks)), meta;
        for (int64_t i = 0; i < blocks; ++i) bt[size_t(i)] = int32_t((i * 7) % blocks);
        for (int64_t b = 0; b < batch; ++b) meta.push_back(int32_t(ctx - 1));
        for (int64_t b = 0; b < batch; ++b) meta.push_back(int32_t(b));
        int32_t *dbt = nullptr, *dmeta = nullptr;
        ANYBIT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&dbt), bt.size() * 4));
        ANYBIT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&dmeta), meta.size() * 4));
        ANYBIT_CUDA_CHECK(cudaMemcpy(dbt, bt.data(), bt.size() * 4, cudaMemcpyHostToDevice));
        ANYBIT_CUDA_CHECK(cudaMemcpy(dmeta, meta.data(), meta.size() * 4, cudaMemcpyHostToDevice));
        AttentionArgs a;
        const size_t qbytes = size_t(batch * heads * hd) * 4;
        a.q = static_cast<float*>(random_device_bytes(qbytes, DType::F32, rng));
        a.ldq = heads * hd;
        float* out = nullptr;
        ANYBIT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&out), qbytes));
        a.out = out, a.ldo = heads * hd, a.kv = kv, a.layer = 0, a.n_heads = heads;
        a.scale = 1.0f / std::sqrt(float(hd));
        a.n_tok = batch, a.n_seq = batch, a.tok_pos = dmeta, a.tok_seq = dmeta + batch, a.block_tables = dbt;
        a.max_blocks = per_seq;
        decode_splits(ctx, a.n_splits, a.split_len);  // what the model runs for this capacity
        float* part = nullptr;
        ANYBIT_CUDA_CHECK(
            cudaMalloc(reinterpret_cast<void**>(&part), size_t(batch * heads * a.n_splits * (hd + 2)) * 4));
        a.partial = part;
        struct Path {
          const char* name;
          void (*run)(const AttentionArgs&, cudaStream_t);
        };
        std::vector<Path> paths;
        if (attention_decode_mma_supported(a)) paths.push_back({"mma", attention_decode_mma});
        if (dt == DType::F32) paths.push_back({"simt", attention_decode_simt});
        for (const Path& p : paths) {
          const double us = median_graph_us([&](int, cudaStream_t st) { p.run(a, st); }, 7);
          const double gbs = double(kv_bytes) / us / 1e3;
          std::printf("| attention decode | %s, %s | %lld | %lld | %lld | %.1f | %.0f | %.0f |\n",
                      std::string(dtype_name(dt)).c_str(), p.name, (long long)ctx, (long long)batch,
                      (long long)a.n_splits, us, gbs, 100.0 * gbs / copy_gbs);
          std::fflush(stdout);
        }
        cudaFree(kv.base);
        cudaFree(dbt);
        cudaFree(dmeta);
        cudaFree(const_cast<float*>(a.q));
        cudaFree(out);
        cudaFree(part);
      }
}

}  // namespace anybit::cuda::bench
