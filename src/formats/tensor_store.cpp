#include "formats/tensor_store.h"

#include <cstring>

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

std::vector<float> tensor_as_f32(const TensorView& t) {
  if (t.dtype == DType::QBITS) fail("tensor {} is quantized; it has no plain fp32 form here", t.name);
  std::vector<float> out(size_t(t.numel()));
  const int64_t cols = t.shape.empty() ? 1 : t.shape.back(), rows = cols ? t.numel() / cols : 0;
  const size_t rb = dtype_row_bytes(t.dtype, cols);
  for (int64_t r = 0; r < rows; ++r)
    dequantize_row(t.dtype, static_cast<const uint8_t*>(t.data) + size_t(r) * rb, out.data() + r * cols, cols);
  return out;
}

void add_float_tensor(TensorStore& store, const std::string& name, std::vector<int64_t> shape,
                      const std::vector<float>& values, DType dtype) {
  if (dtype != DType::BF16 && dtype != DType::F16) dtype = DType::F32;
  TensorView t;
  t.name = name;
  t.shape = std::move(shape);
  t.dtype = dtype;
  std::vector<uint8_t> bytes(values.size() * (dtype == DType::F32 ? 4 : 2));
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::F32) {
      std::memcpy(bytes.data() + 4 * i, &values[i], 4);
    } else {
      const uint16_t b = dtype == DType::BF16 ? f32_to_bf16(values[i]) : f32_to_f16(values[i]);
      std::memcpy(bytes.data() + 2 * i, &b, 2);
    }
  }
  t.nbytes = bytes.size();
  t.data = store.own(std::move(bytes));
  store.add(std::move(t));
}

}  // namespace anybit
