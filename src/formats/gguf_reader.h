// GGUF container reader (versions 2 and 3): metadata key/values, tensor infos and
// views of the tensor data in the mapped file. Knows nothing about model
// architectures; gguf_model.cpp maps a parsed file to anybit's model.
//
// Every count, length and offset read from the file is checked against the file
// size before use, so a truncated or hostile file gives "<path>: <problem>"
// instead of a huge allocation or an out-of-bounds read.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "core/tensor.h"

namespace anybit {

enum class GgufType : uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};

const char* gguf_type_name(GgufType t);

// One metadata value. Integers of every width are held in `i` (signed) or `u`
// (unsigned) so callers can ask for "an integer" without caring which width the
// producer chose; arrays hold their elements (which may be arrays themselves).
struct GgufValue {
  GgufType type = GgufType::U32;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string str;
  GgufType elem_type = GgufType::U8;  // arrays only
  std::vector<GgufValue> arr;

  static GgufValue make_u32(uint32_t v);
  static GgufValue make_i32(int32_t v);
  static GgufValue make_u64(uint64_t v);
  static GgufValue make_f32(float v);
  static GgufValue make_bool(bool v);
  static GgufValue make_str(std::string v);
  static GgufValue make_str_array(const std::vector<std::string>& v);
  static GgufValue make_f32_array(const std::vector<float>& v);
  static GgufValue make_i32_array(const std::vector<int32_t>& v);

  bool is_integer() const;
  bool is_float() const { return type == GgufType::F32 || type == GgufType::F64; }
};

// ggml tensor type ids as stored in GGUF tensor infos.
struct GgmlTypeInfo {
  const char* name;
  int64_t block_size;  // elements per block
  size_t block_bytes;  // bytes per block
};
// nullptr for an id no ggml version has used.
const GgmlTypeInfo* ggml_type_info(uint32_t ggml_type);
// anybit dtype of a ggml type id; nullopt for the ones anybit cannot compute with yet.
std::optional<DType> ggml_type_to_dtype(uint32_t ggml_type);
uint32_t dtype_to_ggml_type(DType t);

struct GgufTensorInfo {
  std::string name;
  uint32_t ggml_type = 0;
  std::vector<int64_t> shape;  // row-major, outermost first (GGUF stores the reverse)
  uint64_t offset = 0;         // relative to the start of the data section
  size_t nbytes = 0;
};

class GgufFile {
 public:
  // Parses header, metadata and tensor infos; checks every tensor lies inside the file.
  static GgufFile open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  size_t data_offset() const { return data_offset_; }
  const std::shared_ptr<MappedFile>& file() const { return file_; }

  const std::vector<std::string>& keys() const { return key_order_; }  // in file order
  const GgufValue* find(const std::string& key) const;
  bool has(const std::string& key) const { return find(key) != nullptr; }

  // Typed getters: throw "<path>: metadata KEY ..." when missing or of the wrong type.
  // Integer getters accept any integer type whose value fits.
  int64_t get_int(const std::string& key) const;
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_float(const std::string& key) const;  // f32, f64 (or an integer)
  double get_float(const std::string& key, double fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
  const std::string& get_str(const std::string& key) const;
  std::string get_str(const std::string& key, const std::string& fallback) const;
  // Array getters; an absent key gives an empty vector.
  std::vector<std::string> get_str_array(const std::string& key) const;
  std::vector<float> get_f32_array(const std::string& key) const;
  std::vector<int32_t> get_i32_array(const std::string& key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  // A view into the mapping; throws "<path>: tensor NAME has unsupported tensor type Q4_K".
  TensorView view(const GgufTensorInfo& t) const;

 private:
  std::shared_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  size_t data_offset_ = 0;
  std::map<std::string, GgufValue> kv_;
  std::vector<std::string> key_order_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace anybit
