#include "runtime/device.h"

#include <cstdlib>

#include "core/error.h"
#include "kernels/dispatch.h"
#ifdef ANYBIT_WITH_CUDA
#include "kernels/cuda_kernels.h"
#include "model/llama_cuda.h"
#endif

namespace anybit {

namespace {

class CpuBackend final : public ModelBackend {
 public:
  explicit CpuBackend(LlamaModel& m) : m_(m) {}
  const ModelConfig& config() const override { return m_.config(); }
  void forward(const std::vector<BatchEntry>& batch, KVCache& kv, ForwardOutput& out) override {
    m_.forward(batch, kv, out);
  }
  size_t weight_bytes() const override { return m_.weight_bytes(); }
  std::string name() const override { return "cpu (" + std::string(isa_name(kernels().isa)) + ")"; }

 private:
  LlamaModel& m_;
};

}  // namespace

bool cuda_available() {
#ifdef ANYBIT_WITH_CUDA
  static const bool ok = cuda::device_count() > 0;
  return ok;
#else
  return false;
#endif
}

Device resolve_device(const std::string& name) {
  std::string n = name;
  if (n.empty() || n == "auto") {
    const char* env = std::getenv("ANYBIT_DEVICE");
    n = env && *env ? env : (cuda_available() ? "cuda" : "cpu");
  }
  if (n == "cpu") return Device::Cpu;
  if (n == "cuda") {
    if (!cuda_available()) {
#ifdef ANYBIT_WITH_CUDA
      fail("--device cuda: no CUDA device is visible");
#else
      fail("--device cuda: this binary was built without CUDA");
#endif
    }
    return Device::Cuda;
  }
  fail("--device must be cpu, cuda or auto (got '{}')", name);
}

std::string device_name(Device d) { return d == Device::Cuda ? "cuda" : "cpu"; }

std::unique_ptr<ModelBackend> make_cpu_backend(LlamaModel& model) { return std::make_unique<CpuBackend>(model); }

double kv_elem_bytes(Device d, std::optional<DType> kv, int64_t head_dim) {
  const DType t = d == Device::Cpu ? DType::F32 : kv.value_or(DType::F16);
  if (t == DType::I8) return 1.0 + 4.0 / double(head_dim > 0 ? head_dim : 1);
  return t == DType::F32 ? 4.0 : 2.0;
}

std::unique_ptr<ModelBackend> make_cuda_backend(const ModelConfig& cfg, std::shared_ptr<const TensorStore> weights,
                                                DType kv_dtype) {
#ifdef ANYBIT_WITH_CUDA
  auto m = std::make_unique<LlamaCudaModel>(cfg, std::move(weights));
  m->set_kv_dtype(kv_dtype);
  return m;
#else
  (void)cfg;
  (void)weights;
  (void)kv_dtype;
  fail("--device cuda: this binary was built without CUDA");
#endif
}

}  // namespace anybit
