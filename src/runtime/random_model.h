// Named random-weight model shapes (e.g. the Llama-3.2-1B shape with a small
// vocab) so benchmarks need no download, in any stored dtype.
#pragma once
#include <string>
#include <vector>

#include "formats/model_loader.h"

namespace anybit {

// "llama-1b", "llama-8b", "tiny". Throws anybit::Error for an unknown name.
ModelConfig named_shape(const std::string& name);
std::vector<std::string> named_shapes();

// Weights drawn from N(0, 0.02) (norms = 1) and stored in `dtype` (F32, F16, BF16).
ModelFiles make_random_model(const ModelConfig& cfg, DType dtype, uint64_t seed);

}  // namespace anybit
