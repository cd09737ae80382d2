// Named tensors of one model, whatever file format they came from. Keeps the
// mapped files (and any buffers converted at load) alive as long as it lives.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "core/tensor.h"

namespace anybit {

class TensorStore {
 public:
  void add(TensorView t);
  void keep_alive(std::shared_ptr<MappedFile> f) { files_.push_back(std::move(f)); }
  // Owns `bytes` and returns a pointer that stays valid for the store's life.
  const void* own(std::vector<uint8_t> bytes);

  const TensorView* find(const std::string& name) const;
  // Throws "<origin>: missing tensor NAME" / "...: tensor NAME has shape [..], expected [..]".
  const TensorView& get(const std::string& name) const;
  const TensorView& get(const std::string& name, const std::vector<int64_t>& shape) const;
  bool contains(const std::string& name) const { return find(name) != nullptr; }

  const std::map<std::string, TensorView>& all() const { return tensors_; }
  void set_origin(std::string origin) { origin_ = std::move(origin); }
  const std::string& origin() const { return origin_; }
  size_t total_bytes() const;

 private:
  std::string origin_;  // path shown in error messages
  std::map<std::string, TensorView> tensors_;
  std::vector<std::shared_ptr<MappedFile>> files_;
  std::vector<std::unique_ptr<std::vector<uint8_t>>> owned_;
};

// Every value of a stored tensor (any row dtype; not QBITS) as fp32, row by row.
std::vector<float> tensor_as_f32(const TensorView& t);
// Adds `values` under `name` as an owned tensor stored in `dtype` (BF16 or F16; any other
// dtype stores F32).
void add_float_tensor(TensorStore& store, const std::string& name, std::vector<int64_t> shape,
                      const std::vector<float>& values, DType dtype);

}  // namespace anybit
