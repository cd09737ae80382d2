#include "runtime/engine.h"

#include <omp.h>

#include "core/error.h"

namespace anybit {

void set_thread_count(int threads) {
  if (threads < 0) fail("--threads must be >= 0 (got {})", threads);
  if (threads > 0) omp_set_num_threads(threads);
}

Engine::Engine(ModelFiles files, const EngineOptions& opts) : files_(std::move(files)) {
  set_thread_count(opts.threads);
  model_ = std::make_unique<LlamaModel>(files_.config, files_.weights);
  device_ = resolve_device(opts.device);
  if (device_ == Device::Cpu && opts.kv_dtype && *opts.kv_dtype != DType::F32)
    fail("--kv-dtype {}: the CPU backend keeps its KV cache in f32 (f16/bf16/i8 caches are GPU-only)",
         dtype_name(*opts.kv_dtype));
  backend_ = device_ == Device::Cuda
                 ? make_cuda_backend(files_.config, files_.weights, opts.kv_dtype.value_or(DType::F16))
                 : make_cpu_backend(*model_);
  max_context_ = opts.max_context > 0 ? opts.max_context : files_.config.max_position;
  if (max_context_ <= 0) max_context_ = 4096;
  const int64_t bs = 16;
  const int64_t per_seq = (max_context_ + bs - 1) / bs;
  // A GPU backend keeps the data on the device: the host cache is bookkeeping only.
  kv_ = std::make_unique<KVCache>(files_.config, per_seq * std::max<int64_t>(1, opts.max_sequences), bs,
                                  device_ == Device::Cpu);
}

std::unique_ptr<Engine> Engine::load(const std::string& path, const EngineOptions& opts,
                                     const LoadProgress& progress) {
  return std::make_unique<Engine>(load_model_files(path, progress), opts);
}

}  // namespace anybit
