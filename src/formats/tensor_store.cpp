#include "formats/tensor_store.h"

#include "core/error.h"

namespace anybit {

void TensorStore::add(TensorView t) {
  const std::string name = t.name;
  if (!tensors_.emplace(name, std::move(t)).second) fail("{}: duplicate tensor {}", origin_, name);
}

const void* TensorStore::own(std::vector<uint8_t> bytes) {
  owned_.push_back(std::make_unique<std::vector<uint8_t>>(std::move(bytes)));
  return owned_.back()->data();
}

const TensorView* TensorStore::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const TensorView& TensorStore::get(const std::string& name) const {
  const TensorView* t = find(name);
  if (!t) fail("{}: missing tensor {}", origin_, name);
  return *t;
}

const TensorView& TensorStore::get(const std::string& name, const std::vector<int64_t>& shape) const {
  const TensorView& t = get(name);
  if (t.shape != shape) {
    TensorView want;
    want.shape = shape;
    fail("{}: tensor {} has shape {}, expected {}", origin_, name, t.shape_str(), want.shape_str());
  }
  return t;
}

size_t TensorStore::total_bytes() const {
  size_t n = 0;
  for (const auto& [_, t] : tensors_) n += t.nbytes;
  return n;
}

}  // namespace anybit
