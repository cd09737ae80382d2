// Rotation of the residual stream before quantization (the QuaRot / SpinQuant idea, offline
// part only): h' = h Q for an orthogonal Q of the hidden size. Every RMSNorm weight is folded
// into the matrices that read the normalized stream (and set to 1, so that the norm commutes
// with Q), then
//   q, k, v, gate, up, lm_head:  W' = W diag(g) Q        (they read the stream)
//   o, down:                     W' = Q^T W, b' = Q^T b  (they write to it)
//   embedding rows:              e' = e Q
// The rotated model is the same function (up to rounding) in the same architecture, so no
// kernel changes: the rotation only spreads outlier input channels over all of them, which
// makes groups of weights easier to quantize. Q is a Hadamard matrix (sizes 2^k and 12 * 2^k)
// with random signs, else a random orthogonal matrix (QR of a Gaussian one).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "formats/model_loader.h"

namespace anybit::quant {

// n x n orthogonal matrix, row-major, deterministic in `seed`; `kind` receives "hadamard" or
// "orthogonal".
std::vector<double> random_rotation(int64_t n, uint64_t seed, std::string* kind = nullptr);

// The rotated model: a new store with the rotated tensors (linear matrices in f32, the
// embedding in its stored dtype, norms = 1) and the untouched ones shared with `in`.
// Fails with a clear message for tied embeddings and for tensors it does not know how to
// rotate (anything beyond the Llama-family names).
ModelFiles rotate_residual(ModelFiles in, uint64_t seed, std::string* description = nullptr);

}  // namespace anybit::quant
