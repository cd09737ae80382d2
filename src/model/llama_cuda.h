// The Llama-family transformer on one CUDA GPU, with LlamaModel's forward() contract.
//
// Weights are copied to the device once, in their stored dtype (f32 / f16 / bf16, or QBITS
// any-bit matrices repacked by pack_qbits_for_gpu), with q|k|v and gate|up concatenated so
// each is one matrix where the parts share a format (else a matrix runs as several parts
// writing adjacent output columns). Activations and accumulation are fp32 like the CPU
// model, so both agree to rounding for dense weights.
//
// The host KVCache passed to forward() keeps the block bookkeeping (reserve / release /
// block tables, prefix sharing); the key/value data lives in a device mirror of its
// layout owned here (fp32, f16 or bf16: set_kv_dtype), so a KVCache must be used with one
// backend only. Each forward
// uploads a small metadata block (tokens, positions, slots, block tables), runs every
// kernel on one stream and copies the wanted logits back: one synchronisation per call.
// Decode calls (every entry one token, last logits only) are captured once per batch
// size into a CUDA graph and replayed.
#pragma once
#ifdef ANYBIT_WITH_CUDA
#include <cuda_runtime_api.h>

#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cuda_kernels.h"
#include "runtime/device.h"

namespace anybit {

class LlamaCudaModel final : public ModelBackend {
 public:
  // Checks every tensor like LlamaModel and uploads it; throws anybit::Error naming
  // `weights.origin()` and the tensor for a missing tensor, a bad shape, an unsupported
  // dtype or a QBITS weight the GPU cannot run (cols % 32 != 0, a non-finite scale, ...).
  LlamaCudaModel(const ModelConfig& cfg, std::shared_ptr<const TensorStore> weights);
  ~LlamaCudaModel() override;
  LlamaCudaModel(const LlamaCudaModel&) = delete;
  LlamaCudaModel& operator=(const LlamaCudaModel&) = delete;

  const ModelConfig& config() const override { return cfg_; }
  void forward(const std::vector<BatchEntry>& batch, KVCache& kv, ForwardOutput& out) override;
  size_t weight_bytes() const override { return weight_bytes_; }
  std::string name() const override;

  // Greedy ids of the previous forward's logits rows, reduced on the device.
  std::vector<int32_t> argmax_last();
  // Sampling on the device (kernels/sampling_cuda.h), one request per logits row.
  bool sample_last(const std::vector<SampleRequest>& req, std::vector<int32_t>& ids) override;
  bool has_device_sampler() const override { return true; }
  // Graph replay for decode calls (default on; ANYBIT_CUDA_GRAPHS=0 turns it off).
  void set_graphs(bool on) { graphs_on_ = on; }
  int64_t graph_replays() const { return graph_replays_; }
  // Copies the device KV storage back, widened to fp32 (tests compare it with the CPU
  // model's cache).
  std::vector<float> download_kv() const;
  // Element type of the device KV cache: F32 (default: exact agreement with the CPU
  // model), F16 or BF16 (half the memory and attention traffic) or I8 (a quarter, plus one
  // fp32 scale per row); decode attention then runs on the tensor cores. Takes effect at the
  // next forward (the cache is reallocated).
  void set_kv_dtype(DType dtype);
  DType kv_dtype() const { return kv_dtype_; }

 private:
  // One part of a matrix: a dense or a QBITS weight producing output columns
  // [offset, offset + rows) of the matrix's rows.
  struct LinearPart {
    bool qbits = false;
    cuda::DeviceWeight dense;
    cuda::QbitsDeviceWeight q;
    int64_t offset = 0;
  };
  // A matrix of the model (q|k|v, o, gate|up, down, lm_head). Usually one part; several
  // when its tensors differ in format (llama_cuda_weights.cpp says when).
  struct Linear {
    std::vector<LinearPart> parts;
    const float* bias = nullptr;  // [all rows] in the matrix's output order, or null
    // gate|up only: rows interleave gate and up (one part, SwiGLU fused into the GEMV
    // epilogue); otherwise the output is [gate F | up F].
    bool pairs = false;
  };
  struct Layer {
    Linear qkv, o, gate_up, down;
    const float* attn_norm = nullptr;
    const float* mlp_norm = nullptr;
  };
  // Offsets (in int32s) of the metadata arrays for a call of T tokens, S entries, R rows.
  struct Meta {
    int64_t T = 0, S = 0, R = 0, MB = 0;
    int64_t tokens = 0, pos = 0, slot = 0, tok_seq = 0, qstart = 0, nq = 0, out_src = 0, btab = 0, total = 0;
    int64_t max_nq = 0;
    bool identity_rows = false;  // logits rows are exactly the token rows
  };

  void* upload(const void* host, size_t bytes);
  void load_weights();  // llama_cuda_weights.cpp
  void release();       // frees everything (destructor, failed constructor)
  // Enqueues y = op(x) . W^T (+ bias) (+ y) for every part of `w`.
  void run_linear(const Linear& w, cuda::LinearArgs a);
  void ensure_kv(const KVCache& kv);
  void ensure_scratch(int64_t T, int64_t R);
  Meta layout(int64_t T, int64_t S, int64_t R) const;
  void enqueue(const Meta& m);
  void clear_graphs();

  ModelConfig cfg_;
  std::shared_ptr<const TensorStore> weights_;
  std::vector<void*> allocs_;
  size_t weight_bytes_ = 0;
  cudaStream_t stream_ = nullptr;
  std::string device_name_;

  cuda::DeviceWeight embed_;
  Linear lm_head_;
  const float* final_norm_ = nullptr;
  const float* inv_freq_ = nullptr;
  std::vector<Layer> layers_;
  bool gemv_ok_ = true;  // every dense K suits the fused GEMV path (QBITS always does)
  std::vector<cuda::QbitsDeviceAlloc> qallocs_;
  // Scratch of the batched QBITS paths (linear_qbits): mma_qbits' staged x and partial sums,
  // or gemm_qbits' dequantized bf16 copy of one part; sized for the largest part; null when
  // the model has no QBITS matrix.
  void* qscratch_ = nullptr;

  // KV mirror
  const KVCache* kv_host_ = nullptr;
  int64_t kv_blocks_ = 0;
  void* kv_dev_ = nullptr;
  DType kv_dtype_ = DType::F32;
  cuda::KVLayout kv_layout_;
  int64_t max_blocks_ = 0, n_splits_ = 1, split_len_ = 0;

  // scratch (device) sized for T_cap tokens / R_cap logits rows
  int64_t T_cap_ = 0, R_cap_ = 0;
  float* scratch_ = nullptr;
  float *x_ = nullptr, *xn_ = nullptr, *qkv_ = nullptr, *att_ = nullptr, *gu_ = nullptr, *act_ = nullptr,
        *lm_in_ = nullptr, *logits_ = nullptr, *partial_ = nullptr;
  float* logits_host_ = nullptr;  // pinned
  int32_t* meta_dev_ = nullptr;
  int32_t* meta_host_ = nullptr;  // pinned
  int64_t meta_cap_ = 0;
  int32_t* argmax_dev_ = nullptr;
  int64_t last_rows_ = 0;
  // sample_last: [R_cap][vocab] scratch, the rows' requests, the penalty ids (grown on demand)
  float* sample_work_ = nullptr;
  void* sample_rows_dev_ = nullptr;
  int32_t* sample_pen_dev_ = nullptr;
  int64_t sample_pen_cap_ = 0;

  bool graphs_on_ = true;
  std::map<std::tuple<int64_t, int64_t, int64_t>, cudaGraphExec_t> graphs_;
  int64_t graph_replays_ = 0;
};

}  // namespace anybit

#endif  // ANYBIT_WITH_CUDA
