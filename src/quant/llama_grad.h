// A fp32 forward and backward pass of the Llama architecture on the CPU, for tuning
// quantization parameters end to end (quant/finetune.h). Not an inference path: it keeps
// every activation of a batch of equal-length windows for the backward pass, and runs
// attention as dense T x T matrices per head.
//
// Weights are given as fp32 row-major matrices (PyTorch Linear layout, rows = outputs), so
// the same code runs the unquantized teacher and the dequantized student. The backward
// pass returns the gradient of every linear weight of the layers (as a full matrix: the
// caller folds it into group scales and zeros) and of the RMSNorm weights; embeddings and
// lm_head are constants.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"

namespace anybit::quant {

struct GradLinear {
  const float* w = nullptr;  // rows x cols
  const float* b = nullptr;  // rows, or null
  int64_t rows = 0, cols = 0;
};

// Linear matrices of a layer in this order (the index of LayerGrads::w).
enum GradMatrix { kGq = 0, kGk, kGv, kGo, kGgate, kGup, kGdown, kGradMatrices };

struct GradLayer {
  GradLinear lin[kGradMatrices];
  const float* attn_norm = nullptr;  // hidden
  const float* mlp_norm = nullptr;   // hidden
};

struct GradModel {
  const float* embed = nullptr;  // vocab x hidden
  std::vector<GradLayer> layers;
  const float* final_norm = nullptr;
  GradLinear lm_head;
};

struct LayerGrads {
  std::vector<float> w[kGradMatrices];  // same shapes as the weights
  std::vector<float> attn_norm, mlp_norm;
};
struct ModelGrads {
  std::vector<LayerGrads> layers;
  std::vector<float> final_norm;
};

class LlamaGrad {
 public:
  // Throws for what the pass does not model (sliding-window attention shorter than the
  // windows it will see is checked in forward).
  explicit LlamaGrad(const ModelConfig& cfg);

  // Logits [B*T x vocab] of B windows of T tokens each (positions 0..T-1, no BOS added).
  // With `save`, keeps what backward needs (about 6 k floats per token and layer, plus
  // heads x T x T attention probabilities per window and layer).
  void forward(const GradModel& m, const std::vector<const std::vector<int32_t>*>& windows, bool save,
               std::vector<float>& logits);
  // Gradients of sum(dlogits . logits) with respect to the layers' weights and norms, for
  // the last forward made with `save`. Overwrites g.
  void backward(const GradModel& m, const std::vector<float>& dlogits, ModelGrads& g);

 private:
  struct LayerSave {
    std::vector<float> x, n1, r1, q, k, v, p, a, x2, n2, r2, gate, up, act;
  };
  ModelConfig cfg_;
  std::vector<float> cos_, sin_;  // T x head_dim/2, for the current T
  int64_t B_ = 0, T_ = 0;
  std::vector<LayerSave> save_;
  std::vector<float> x_final_, nf_, rf_;
  void rope_table(int64_t T);
};

}  // namespace anybit::quant
