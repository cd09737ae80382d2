// Safetensors reader: one file or a sharded checkpoint (model.safetensors.index.json).
// Files are mmapped; tensors are views into the mapping (no copy).
#pragma once
#include <string>

#include "formats/tensor_store.h"

namespace anybit {

// Adds every tensor of one .safetensors file to `store`. Throws "<path>: <problem>".
void read_safetensors_file(const std::string& path, TensorStore& store);

// Reads a model folder: model.safetensors.index.json when present (every shard it
// names), otherwise every *.safetensors file in the folder.
void read_safetensors_dir(const std::string& dir, TensorStore& store);

}  // namespace anybit
