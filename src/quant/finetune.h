// End-to-end tuning of quantization parameters (`anybit quantize --finetune N`): after the
// layer-wise quantizers have fixed every code, the group scales and zero points of all
// layers (and the RMSNorm weights) are trained together by gradient descent so that the
// quantized model's next-token distributions match the unquantized model's on the
// calibration text (KL divergence, teacher = the model being quantized). The codes stay
// as they are, so the file format, the bits per weight and the kernels are unchanged.
// (Training the codes too, through a straight-through rounding, was measured and
// rejected: docs/QUANTIZATION.md, fifteenth session.)
//
// This is the idea of EfficientQAT's end-to-end stage and of PEQA: a layer-wise
// quantizer matches each matrix's own outputs, but at 2-3 bits the errors of many
// matrices compound, and only a model-level objective can trade them against each other.
//
// Parameters: scale s = s0 * exp(theta) per group (the step is relative, whatever a
// matrix's magnitude), zero z = z0 + phi in code units (asymmetric groups), norm weight
// g = g0 * (1 + psi). Adam, a cosine learning-rate decay, and the epoch whose held-out
// calibration KL is lowest is kept (never a worse model than the start).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "formats/tensor_store.h"
#include "model/config.h"
#include "quant/quantized_weight.h"

namespace anybit::quant {

struct FinetuneOptions {
  int epochs = 0;               // 0 = off
  int64_t batch_windows = 4;    // windows per step
  double lr = 2e-3;             // log-scales and norms (relative), per step at the peak
  double zero_lr = 1e-2;        // zero points, code units per step at the peak
  bool train_norms = true;
  int64_t holdout_windows = 0;  // 0 = about 1/16 of the windows (at least 1)
  bool progress = true;
  DType meta_dtype = DType::F32;  // the tuned scales and zeros are rounded to this (the file's dtype)
};

// What the student runs besides the trainable matrices: lm_head and the embedding table
// as the quantized file will hold them (fp32, rows x hidden); empty = as stored in `teacher`.
struct FinetuneFixed {
  std::vector<float> lm_head, embed;
  // The student's RMSNorm weights where they differ from the teacher's (an earlier tuning),
  // by tensor name; missing names start from the teacher's.
  std::map<std::string, std::vector<float>> norms;
};

struct FinetuneResult {
  double kl_start = 0.0, kl_best = 0.0;  // held-out calibration KL (nats per token)
  int best_epoch = 0;                     // 0 = the start was kept
  int steps = 0;
  std::vector<double> epoch_kl;           // held-out KL after each epoch
  // Tuned RMSNorm weights (fp32), by tensor name; empty when norms were not trained or the
  // start was kept.
  std::map<std::string, std::vector<float>> norms;
};

// Tunes `linear` in place (scales, and zeros where asymmetric): every q/k/v/o/gate/up/down
// matrix of every layer must be present, keyed by tensor name. `teacher` holds the
// unquantized weights (and the norms, biases, embedding and lm_head). `windows` are
// calibration windows of equal length; the last holdout_windows of them are held out.
FinetuneResult finetune_quantized(const ModelConfig& cfg, const TensorStore& teacher,
                                  std::map<std::string, std::shared_ptr<QuantizedWeight>>& linear,
                                  const FinetuneFixed& fixed, const std::vector<std::vector<int32_t>>& windows,
                                  const FinetuneOptions& opts);

}  // namespace anybit::quant
