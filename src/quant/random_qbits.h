// Random any-bit (QBITS) models of a named shape, so kernels and `anybit bench` can be
// measured at any bit width without a checkpoint.
#pragma once
#include <cstdint>
#include <memory>

#include "formats/model_loader.h"
#include "quant/quantized_weight.h"

namespace anybit {

// One rows x cols weight: uniform random codes, per-group scales |N(0, 1)| * 0.02 / 2^(bits-1)
// rounded to f16 (so values have roughly the spread of N(0, 0.02)); asymmetric weights
// get integer zero points in [0, 2^bits). Deterministic in `seed`.
std::shared_ptr<QuantizedWeight> make_random_qweight(int64_t rows, int64_t cols, int bits, int group,
                                                     bool asymmetric, uint64_t seed);

// Every linear layer and the LM head quantized to `bits` (2..8) with `group` (32, 64, 128),
// symmetric; embeddings bf16, norms fp32 = 1. act_bits 8 makes every matrix W*A8.
ModelFiles make_random_qbits_model(const ModelConfig& cfg, int bits, int group, uint64_t seed, int act_bits = 0);

}  // namespace anybit
