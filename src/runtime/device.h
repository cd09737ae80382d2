// Backend selection (--device cpu|cuda) and the one interface both model backends share,
// so generation, perplexity and benchmarks run unchanged on either.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model/llama.h"
#include "runtime/sampler.h"

namespace anybit {

// What the runtime calls: LlamaModel's forward() shape.
class ModelBackend {
 public:
  virtual ~ModelBackend() = default;
  virtual const ModelConfig& config() const = 0;
  // Same contract as LlamaModel::forward: reserves the KV blocks it needs (throwing and
  // changing nothing when the cache is full), fills `out`, advances each seq.
  virtual void forward(const std::vector<BatchEntry>& batch, KVCache& kv, ForwardOutput& out) = 0;
  virtual size_t weight_bytes() const = 0;
  virtual std::string name() const = 0;  // "cpu (avx512)", "cuda (NVIDIA H100 ...)"
  // Samples one token from each logits row of the previous forward(), where the logits are
  // (one request per row, same distribution as Sampler::sample). Returns false when the
  // backend has no sampler of its own: the caller then samples on the host.
  virtual bool sample_last(const std::vector<SampleRequest>& req, std::vector<int32_t>& ids) {
    (void)req, (void)ids;
    return false;
  }
  virtual bool has_device_sampler() const { return false; }
};

enum class Device { Cpu, Cuda };

// Bytes per cached key/value element on device `d` with the --kv-dtype choice `kv` (unset =
// auto: f16 on the GPU, f32 on the CPU); int8 rows carry one fp32 scale per head_dim values.
double kv_elem_bytes(Device d, std::optional<DType> kv, int64_t head_dim);

// True when this binary was built with CUDA and a CUDA device is visible.
bool cuda_available();
// "cpu", "cuda" or "auto" (cuda when available, else cpu; ANYBIT_DEVICE overrides auto).
// Throws anybit::Error for an unknown name or cuda without a device.
Device resolve_device(const std::string& name);
std::string device_name(Device d);

// The CPU backend wraps a LlamaModel it does not own.
std::unique_ptr<ModelBackend> make_cpu_backend(LlamaModel& model);
// The GPU backend (model/llama_cuda.h); throws when built without CUDA.
// kv_dtype: element type of the device KV cache (F32, F16 or BF16).
std::unique_ptr<ModelBackend> make_cuda_backend(const ModelConfig& cfg, std::shared_ptr<const TensorStore> weights,
                                                DType kv_dtype = DType::F32);

}  // namespace anybit
