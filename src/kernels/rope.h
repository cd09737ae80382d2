// Rotary position embedding in the Hugging Face "rotate_half" layout: element i of
// a head is paired with element i + head_dim/2.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"

namespace anybit {

// Inverse frequencies (head_dim/2 of them), including Llama-3 / linear scaling.
std::vector<float> rope_inv_freq(const ModelConfig& cfg);

// Rotates n_heads heads of each of n_tok rows of x (row stride n_heads*head_dim).
void rope_apply(float* x, int64_t n_tok, const int64_t* positions, int64_t n_heads, int64_t head_dim,
                const std::vector<float>& inv_freq);

}  // namespace anybit
