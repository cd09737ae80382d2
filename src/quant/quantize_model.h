// The `anybit quantize` pipeline: the linear matrices of every layer (and lm_head) of a
// loaded model become QBITS weights; embeddings and norms are kept as stored.
//
//   1. calibration statistics (when calibration text is given), either sequentially
//      (layer l's inputs measured with layers < l already quantized) or all at once;
//   2. optional mixed precision: per-matrix sensitivity and width allocation for a
//      bits-per-weight target (bpw_alloc.h);
//   3. per-matrix quantizer: rtn, rtn-clip, awq, gptq or awq-gptq.
#pragma once
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "formats/model_loader.h"
#include "quant/calibration.h"
#include "quant/finetune.h"
#include "quant/gptq.h"
#include "quant/group_quant.h"

namespace anybit::quant {

struct QuantizeOptions {
  int bits = 4;
  int group = 128;
  bool asym = false;
  int act_bits = 0;
  DType scale_dtype = DType::F16;
  std::string method = "auto";   // auto | rtn | rtn-clip | awq | gptq | awq-gptq
  std::string calib_text;        // empty = no calibration
  std::string calib_origin;      // its file name, for messages and the summary
  // 131,072 rather than 32,768: the reference target W E[r x^T] H^-1 is a regression with up to
  // 1024 inputs per output and needs the tokens (W4 g64 on tiny-llama +0.90% -> +0.26%).
  int64_t calib_tokens = 131072;
  int64_t calib_ctx = 512;
  double target_bpw = 0.0;       // > 0: mixed precision
  int min_bits = 2, max_bits = 8;
  // With target_bpw: choose each matrix's group size (32/64/128) and symmetry as well as
  // its width, instead of using `group` and `asym` everywhere.
  bool mixed_formats = false;
  int64_t sensitivity_tokens = 4096;
  int lm_head_bits = 8;          // 0 keeps lm_head as stored
  int embed_bits = 8;            // the embedding table's width (round-to-nearest; 0 keeps it as stored)
  bool sequential = true;
  // With sequential calibration: quantize each matrix toward the unquantized model's
  // outputs on the same tokens rather than toward its own weights applied to the already
  // quantized inputs (objective.h, reference_target_operator). Needs calibration.
  bool reference_target = false;
  // Sequential calibration per input site instead of per layer (GPTQ's "true sequential").
  bool site_sequential = false;
  bool progress = true;
  int awq_grid = 10;
  GptqOptions gptq;
  // After the layer-wise quantizers: end-to-end tuning of every group scale/zero and norm
  // against the unquantized model on the calibration windows (finetune.h; epochs 0 = off).
  FinetuneOptions finetune;
  // Statistics of the unquantized model from an earlier run (same calibration text):
  // used instead of collecting them again where the pipeline needs unquantized stats.
  std::shared_ptr<const std::map<std::string, InputStats>> fp_stats;
};

struct MatrixReport {
  std::string name;
  int bits = 0;
  std::string quantizer;
  float alpha = 0.0f;        // AWQ exponent (0 = no input scale)
  double rel_error = 0.0;    // output error / output energy on calibration (weight error without)
  int64_t numel = 0;
};

struct QuantizeResult {
  std::shared_ptr<TensorStore> weights;  // keeps the input store alive
  std::vector<MatrixReport> matrices;
  double linear_bpw = 0.0;               // average over the layers' linear matrices
  nlohmann::json summary;                // quantization_config.json content
  std::shared_ptr<const std::map<std::string, InputStats>> fp_stats;  // when collected
  FinetuneResult finetune;               // when --finetune ran
};

// The method "auto" stands for: gptq with calibration text, rtn-clip without.
std::string resolve_method(const QuantizeOptions& o);

QuantizeResult quantize_model(const ModelFiles& in, const QuantizeOptions& o);

}  // namespace anybit::quant
