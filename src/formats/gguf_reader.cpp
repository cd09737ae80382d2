#include "formats/gguf_reader.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace anybit {

namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr int kMaxArrayDepth = 8;            // a nested array bomb must not overflow the stack
constexpr int kMaxDims = 4;                  // GGML_MAX_DIMS

// Indexed by ggml type id; the gaps are ids ggml has retired.
constexpr GgmlTypeInfo kGgmlTypes[] = {
    {"F32", 1, 4},        {"F16", 1, 2},      {"Q4_0", 32, 18},    {"Q4_1", 32, 20},
    {nullptr, 0, 0},      {nullptr, 0, 0},    {"Q5_0", 32, 22},    {"Q5_1", 32, 24},
    {"Q8_0", 32, 34},     {"Q8_1", 32, 36},   {"Q2_K", 256, 84},   {"Q3_K", 256, 110},
    {"Q4_K", 256, 144},   {"Q5_K", 256, 176}, {"Q6_K", 256, 210},  {"Q8_K", 256, 292},
    {"IQ2_XXS", 256, 66}, {"IQ2_XS", 256, 74}, {"IQ3_XXS", 256, 98}, {"IQ1_S", 256, 50},
    {"IQ4_NL", 32, 18},   {"IQ3_S", 256, 110}, {"IQ2_S", 256, 82},  {"IQ4_XS", 256, 136},
    {"I8", 1, 1},         {"I16", 1, 2},      {"I32", 1, 4},       {"I64", 1, 8},
    {"F64", 1, 8},        {"IQ1_M", 256, 56}, {"BF16", 1, 2},      {nullptr, 0, 0},
    {nullptr, 0, 0},      {nullptr, 0, 0},    {"TQ1_0", 256, 54},  {"TQ2_0", 256, 66},
};

size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::Bool: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    case GgufType::String: return 8;  // at least the length prefix
    case GgufType::Array: return 12;  // at least element type + count
  }
  return 1;
}

// Sequential reader over the mapping that never reads past its end.
class Cursor {
 public:
  Cursor(const MappedFile& f) : path_(f.path()), data_(f.data()), size_(f.size()) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  void need(size_t n, const char* what) const {
    if (n > remaining())
      fail("{}: truncated file: {} needs {} bytes at offset {}, only {} left", path_, what, n, pos_, remaining());
  }
  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const char* what) {
    const uint64_t len = read<uint64_t>(what);
    if (len > remaining())
      fail("{}: {} at offset {} claims {} bytes, only {} left in the file", path_, what, pos_ - 8, len,
           remaining());
    std::string s(reinterpret_cast<const char*>(data_ + pos_), size_t(len));
    pos_ += size_t(len);
    return s;
  }

 private:
  const std::string& path_;
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

GgufValue read_value(Cursor& c, GgufType type, const std::string& path, const std::string& key, int depth) {
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufType::U8: v.u = c.read<uint8_t>("metadata value"); v.i = int64_t(v.u); break;
    case GgufType::I8: v.i = c.read<int8_t>("metadata value"); v.u = uint64_t(v.i); break;
    case GgufType::U16: v.u = c.read<uint16_t>("metadata value"); v.i = int64_t(v.u); break;
    case GgufType::I16: v.i = c.read<int16_t>("metadata value"); v.u = uint64_t(v.i); break;
    case GgufType::U32: v.u = c.read<uint32_t>("metadata value"); v.i = int64_t(v.u); break;
    case GgufType::I32: v.i = c.read<int32_t>("metadata value"); v.u = uint64_t(v.i); break;
    case GgufType::U64: v.u = c.read<uint64_t>("metadata value"); v.i = int64_t(v.u); break;
    case GgufType::I64: v.i = c.read<int64_t>("metadata value"); v.u = uint64_t(v.i); break;
    case GgufType::F32: v.f = c.read<float>("metadata value"); break;
    case GgufType::F64: v.f = c.read<double>("metadata value"); break;
    case GgufType::Bool: {
      const uint8_t b = c.read<uint8_t>("metadata value");
      if (b > 1) fail("{}: metadata {} has a bool value {} (must be 0 or 1)", path, key, b);
      v.b = b != 0;
      break;
    }
    case GgufType::String: v.str = c.read_string("metadata string"); break;
    case GgufType::Array: {
      if (depth >= kMaxArrayDepth) fail("{}: metadata {} nests arrays deeper than {}", path, key, kMaxArrayDepth);
      const uint32_t et = c.read<uint32_t>("array element type");
      if (et > uint32_t(GgufType::F64)) fail("{}: metadata {} has an array of unknown type id {}", path, key, et);
      v.elem_type = GgufType(et);
      const uint64_t n = c.read<uint64_t>("array length");
      // Every element occupies at least scalar_size bytes, so a count the rest of
      // the file cannot hold is rejected before anything is allocated.
      if (n > c.remaining() / scalar_size(v.elem_type))
        fail("{}: metadata {} claims {} array elements, more than the file can hold", path, key, n);
      v.arr.reserve(size_t(n));
      for (uint64_t k = 0; k < n; ++k) v.arr.push_back(read_value(c, v.elem_type, path, key, depth + 1));
      break;
    }
    default:
      fail("{}: metadata {} has unknown value type id {}", path, key, uint32_t(type));
  }
  return v;
}

}  // namespace

const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::U8: return "u8";
    case GgufType::I8: return "i8";
    case GgufType::U16: return "u16";
    case GgufType::I16: return "i16";
    case GgufType::U32: return "u32";
    case GgufType::I32: return "i32";
    case GgufType::F32: return "f32";
    case GgufType::Bool: return "bool";
    case GgufType::String: return "string";
    case GgufType::Array: return "array";
    case GgufType::U64: return "u64";
    case GgufType::I64: return "i64";
    case GgufType::F64: return "f64";
  }
  return "?";
}

GgufValue GgufValue::make_u32(uint32_t v) { GgufValue r; r.type = GgufType::U32; r.u = v; r.i = v; return r; }
GgufValue GgufValue::make_i32(int32_t v) { GgufValue r; r.type = GgufType::I32; r.i = v; r.u = uint64_t(int64_t(v)); return r; }
GgufValue GgufValue::make_u64(uint64_t v) { GgufValue r; r.type = GgufType::U64; r.u = v; r.i = int64_t(v); return r; }
GgufValue GgufValue::make_f32(float v) { GgufValue r; r.type = GgufType::F32; r.f = v; return r; }
GgufValue GgufValue::make_bool(bool v) { GgufValue r; r.type = GgufType::Bool; r.b = v; return r; }
GgufValue GgufValue::make_str(std::string v) { GgufValue r; r.type = GgufType::String; r.str = std::move(v); return r; }

GgufValue GgufValue::make_str_array(const std::vector<std::string>& v) {
  GgufValue r;
  r.type = GgufType::Array;
  r.elem_type = GgufType::String;
  r.arr.reserve(v.size());
  for (const auto& s : v) r.arr.push_back(make_str(s));
  return r;
}
GgufValue GgufValue::make_f32_array(const std::vector<float>& v) {
  GgufValue r;
  r.type = GgufType::Array;
  r.elem_type = GgufType::F32;
  r.arr.reserve(v.size());
  for (float x : v) r.arr.push_back(make_f32(x));
  return r;
}
GgufValue GgufValue::make_i32_array(const std::vector<int32_t>& v) {
  GgufValue r;
  r.type = GgufType::Array;
  r.elem_type = GgufType::I32;
  r.arr.reserve(v.size());
  for (int32_t x : v) r.arr.push_back(make_i32(x));
  return r;
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16:
    case GgufType::U32: case GgufType::I32: case GgufType::U64: case GgufType::I64: return true;
    default: return false;
  }
}

const GgmlTypeInfo* ggml_type_info(uint32_t t) {
  if (t >= std::size(kGgmlTypes) || !kGgmlTypes[t].name) return nullptr;
  return &kGgmlTypes[t];
}

std::optional<DType> ggml_type_to_dtype(uint32_t t) {
  switch (t) {
    case 0: return DType::F32;
    case 1: return DType::F16;
    case 2: return DType::Q4_0;
    case 8: return DType::Q8_0;
    case 10: return DType::Q2_K;
    case 11: return DType::Q3_K;
    case 12: return DType::Q4_K;
    case 13: return DType::Q5_K;
    case 14: return DType::Q6_K;
    case 26: return DType::I32;
    case 27: return DType::I64;
    case 30: return DType::BF16;
    default: return std::nullopt;
  }
}

uint32_t dtype_to_ggml_type(DType t) {
  switch (t) {
    case DType::F32: return 0;
    case DType::F16: return 1;
    case DType::Q4_0: return 2;
    case DType::Q8_0: return 8;
    case DType::Q2_K: return 10;
    case DType::Q3_K: return 11;
    case DType::Q4_K: return 12;
    case DType::Q5_K: return 13;
    case DType::Q6_K: return 14;
    case DType::I32: return 26;
    case DType::I64: return 27;
    case DType::BF16: return 30;
  }
  fail("dtype {} has no GGUF type", dtype_name(t));
}

GgufFile GgufFile::open(const std::string& path) {
  GgufFile g;
  g.file_ = MappedFile::open(path);
  const MappedFile& f = *g.file_;
  Cursor c(f);

  if (f.size() < 4) fail("{}: not a GGUF file (only {} bytes)", path, f.size());
  if (c.read<uint32_t>("magic") != kGgufMagic) fail("{}: not a GGUF file (bad magic)", path);
  g.version_ = c.read<uint32_t>("version");
  if (g.version_ == 1) fail("{}: GGUF version 1 is not supported (only 2 and 3)", path);
  if (g.version_ != 2 && g.version_ != 3) fail("{}: unsupported GGUF version {} (only 2 and 3)", path, g.version_);
  const uint64_t n_tensors = c.read<uint64_t>("tensor count");
  const uint64_t n_kv = c.read<uint64_t>("metadata count");
  // The smallest key/value is 8 (key length) + 4 (type) + 1 bytes; the smallest tensor
  // info 8 + 4 + 4 + 8. Larger counts cannot be honest.
  if (n_kv > c.remaining() / 13) fail("{}: header claims {} metadata entries, more than the file can hold", path, n_kv);
  if (n_tensors > c.remaining() / 24) fail("{}: header claims {} tensors, more than the file can hold", path, n_tensors);

  g.key_order_.reserve(size_t(n_kv));
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.read_string("metadata key");
    const uint32_t type = c.read<uint32_t>("metadata value type");
    if (type > uint32_t(GgufType::F64)) fail("{}: metadata {} has unknown value type id {}", path, key, type);
    GgufValue v = read_value(c, GgufType(type), path, key, 0);
    if (!g.kv_.emplace(key, std::move(v)).second) fail("{}: metadata key {} appears twice", path, key);
    g.key_order_.push_back(std::move(key));
  }

  if (const GgufValue* a = g.find("general.alignment")) {
    if (!a->is_integer()) fail("{}: general.alignment has type {}, expected u32", path, gguf_type_name(a->type));
    if (a->u == 0 || (a->u & (a->u - 1)) != 0 || a->u > (1u << 20))
      fail("{}: general.alignment {} is not a power of two", path, a->u);
    g.alignment_ = size_t(a->u);
  }

  g.tensors_.reserve(size_t(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo t;
    t.name = c.read_string("tensor name");
    const uint32_t n_dims = c.read<uint32_t>("tensor dimension count");
    if (n_dims > uint32_t(kMaxDims)) fail("{}: tensor {} has {} dimensions (at most {})", path, t.name, n_dims, kMaxDims);
    std::vector<int64_t> ne(n_dims);
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t v = c.read<uint64_t>("tensor dimension");
      if (v > uint64_t(std::numeric_limits<int64_t>::max()) ||
          (v != 0 && uint64_t(numel) > uint64_t(std::numeric_limits<int64_t>::max()) / v))
        fail("{}: tensor {} has an absurd dimension {}", path, t.name, v);
      ne[d] = int64_t(v);
      numel *= int64_t(v);
    }
    t.ggml_type = c.read<uint32_t>("tensor type");
    const GgmlTypeInfo* ti = ggml_type_info(t.ggml_type);
    if (!ti) fail("{}: tensor {} has unknown tensor type id {}", path, t.name, t.ggml_type);
    const int64_t row = n_dims ? ne[0] : 1;
    if (row % ti->block_size != 0)
      fail("{}: tensor {} of type {} has a row of {} elements, not a multiple of {}", path, t.name, ti->name, row,
           ti->block_size);
    const uint64_t blocks = uint64_t(numel / ti->block_size);
    if (blocks > f.size() / ti->block_bytes)
      fail("{}: tensor {} ({} elements of {}) is larger than the file", path, t.name, numel, ti->name);
    t.nbytes = size_t(blocks) * ti->block_bytes;
    t.offset = c.read<uint64_t>("tensor offset");
    if (t.offset % g.alignment_ != 0)
      fail("{}: tensor {} has offset {}, not a multiple of the alignment {}", path, t.name, t.offset, g.alignment_);
    t.shape.assign(ne.rbegin(), ne.rend());
    if (!g.tensor_index_.emplace(t.name, g.tensors_.size()).second)
      fail("{}: tensor {} appears twice", path, t.name);
    g.tensors_.push_back(std::move(t));
  }

  g.data_offset_ = (c.pos() + g.alignment_ - 1) / g.alignment_ * g.alignment_;
  const size_t data_size = f.size() >= g.data_offset_ ? f.size() - g.data_offset_ : 0;
  if (!g.tensors_.empty() && f.size() < g.data_offset_)
    fail("{}: truncated file: data section would start at {}, file has {} bytes", path, g.data_offset_, f.size());

  std::vector<const GgufTensorInfo*> by_offset;
  for (const auto& t : g.tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      fail("{}: tensor {} data ({} bytes at offset {}) runs past the end of the file", path, t.name, t.nbytes,
           g.data_offset_ + t.offset);
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_offset.size(); ++k) {
    const GgufTensorInfo& prev = *by_offset[k - 1];
    if (prev.nbytes > 0 && prev.offset + prev.nbytes > by_offset[k]->offset)
      fail("{}: tensors {} and {} overlap", path, prev.name, by_offset[k]->name);
  }
  return g;
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

int64_t GgufFile::get_int(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("{}: missing metadata {}", path(), key);
  if (!v->is_integer()) fail("{}: metadata {} has type {}, expected an integer", path(), key, gguf_type_name(v->type));
  if (v->type == GgufType::U64 && v->u > uint64_t(std::numeric_limits<int64_t>::max()))
    fail("{}: metadata {} value {} is out of range", path(), key, v->u);
  return v->i;
}

int64_t GgufFile::get_int(const std::string& key, int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}

double GgufFile::get_float(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("{}: missing metadata {}", path(), key);
  if (v->is_float()) return v->f;
  if (v->is_integer()) return double(v->i);
  fail("{}: metadata {} has type {}, expected a number", path(), key, gguf_type_name(v->type));
}

double GgufFile::get_float(const std::string& key, double fallback) const {
  return has(key) ? get_float(key) : fallback;
}

bool GgufFile::get_bool(const std::string& key, bool fallback) const {
  const GgufValue* v = find(key);
  if (!v) return fallback;
  if (v->type != GgufType::Bool) fail("{}: metadata {} has type {}, expected bool", path(), key, gguf_type_name(v->type));
  return v->b;
}

const std::string& GgufFile::get_str(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("{}: missing metadata {}", path(), key);
  if (v->type != GgufType::String)
    fail("{}: metadata {} has type {}, expected string", path(), key, gguf_type_name(v->type));
  return v->str;
}

std::string GgufFile::get_str(const std::string& key, const std::string& fallback) const {
  return has(key) ? get_str(key) : fallback;
}

namespace {
const GgufValue* array_of(const GgufFile& g, const std::string& key, bool (*ok)(GgufType), const char* want) {
  const GgufValue* v = g.find(key);
  if (!v) return nullptr;
  if (v->type != GgufType::Array || !ok(v->elem_type))
    fail("{}: metadata {} has type {}{}{}, expected an array of {}", g.path(), key, gguf_type_name(v->type),
         v->type == GgufType::Array ? " of " : "", v->type == GgufType::Array ? gguf_type_name(v->elem_type) : "",
         want);
  return v;
}
}  // namespace

std::vector<std::string> GgufFile::get_str_array(const std::string& key) const {
  std::vector<std::string> out;
  if (const GgufValue* v = array_of(*this, key, [](GgufType t) { return t == GgufType::String; }, "strings")) {
    out.reserve(v->arr.size());
    for (const auto& e : v->arr) out.push_back(e.str);
  }
  return out;
}

std::vector<float> GgufFile::get_f32_array(const std::string& key) const {
  std::vector<float> out;
  if (const GgufValue* v = array_of(*this, key, [](GgufType t) { return t == GgufType::F32 || t == GgufType::F64; }, "floats")) {
    out.reserve(v->arr.size());
    for (const auto& e : v->arr) out.push_back(float(e.f));
  }
  return out;
}

std::vector<int32_t> GgufFile::get_i32_array(const std::string& key) const {
  std::vector<int32_t> out;
  auto is_int = [](GgufType t) {
    return t == GgufType::I8 || t == GgufType::U8 || t == GgufType::I16 || t == GgufType::U16 ||
           t == GgufType::I32 || t == GgufType::U32 || t == GgufType::I64 || t == GgufType::U64;
  };
  if (const GgufValue* v = array_of(*this, key, is_int, "integers")) {
    out.reserve(v->arr.size());
    for (const auto& e : v->arr) {
      if (e.i < std::numeric_limits<int32_t>::min() || e.i > std::numeric_limits<int32_t>::max() ||
          (e.type == GgufType::U64 && e.u > uint64_t(std::numeric_limits<int32_t>::max())))
        fail("{}: metadata {} holds {}, out of int32 range", path(), key, e.i);
      out.push_back(int32_t(e.i));
    }
  }
  return out;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

TensorView GgufFile::view(const GgufTensorInfo& t) const {
  const auto dt = ggml_type_to_dtype(t.ggml_type);
  if (!dt) fail("{}: tensor {} has unsupported tensor type {}", path(), t.name, ggml_type_info(t.ggml_type)->name);
  TensorView v;
  v.name = t.name;
  v.dtype = *dt;
  v.shape = t.shape;
  v.data = file_->data() + data_offset_ + t.offset;
  v.nbytes = t.nbytes;
  return v;
}

}  // namespace anybit
