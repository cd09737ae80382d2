#include "formats/gguf_writer.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

#include "core/error.h"

namespace anybit {

namespace {

constexpr uint32_t kGgufMagic = 0x46554747;
constexpr uint32_t kGgufVersion = 3;

// Buffers the output and reports the first failure with the file name.
class Out {
 public:
  Out(const std::string& path, const std::string& shown) : shown_(shown), f_(path, std::ios::binary | std::ios::trunc) {
    if (!f_) fail("{}: cannot create file", shown_);
  }
  void bytes(const void* p, size_t n) {
    f_.write(static_cast<const char*>(p), std::streamsize(n));
    if (!f_) fail("{}: write failed (disk full?)", shown_);
    pos_ += n;
  }
  template <typename T>
  void put(T v) { bytes(&v, sizeof(T)); }
  void str(const std::string& s) {
    put<uint64_t>(s.size());
    bytes(s.data(), s.size());
  }
  void pad_to(size_t alignment) {
    static const char zeros[256] = {};
    size_t n = (alignment - pos_ % alignment) % alignment;
    while (n > 0) {
      const size_t k = std::min(n, sizeof(zeros));
      bytes(zeros, k);
      n -= k;
    }
  }
  size_t pos() const { return pos_; }
  void close() {
    f_.close();
    if (!f_) fail("{}: write failed on close", shown_);
  }

 private:
  const std::string& shown_;
  std::ofstream f_;
  size_t pos_ = 0;
};

void write_value(Out& o, const GgufValue& v, bool with_type) {
  if (with_type) o.put<uint32_t>(uint32_t(v.type));
  switch (v.type) {
    case GgufType::U8: o.put<uint8_t>(uint8_t(v.u)); break;
    case GgufType::I8: o.put<int8_t>(int8_t(v.i)); break;
    case GgufType::U16: o.put<uint16_t>(uint16_t(v.u)); break;
    case GgufType::I16: o.put<int16_t>(int16_t(v.i)); break;
    case GgufType::U32: o.put<uint32_t>(uint32_t(v.u)); break;
    case GgufType::I32: o.put<int32_t>(int32_t(v.i)); break;
    case GgufType::U64: o.put<uint64_t>(v.u); break;
    case GgufType::I64: o.put<int64_t>(v.i); break;
    case GgufType::F32: o.put<float>(float(v.f)); break;
    case GgufType::F64: o.put<double>(v.f); break;
    case GgufType::Bool: o.put<uint8_t>(v.b ? 1 : 0); break;
    case GgufType::String: o.str(v.str); break;
    case GgufType::Array:
      o.put<uint32_t>(uint32_t(v.elem_type));
      o.put<uint64_t>(v.arr.size());
      for (const auto& e : v.arr) write_value(o, e, false);
      break;
  }
}

}  // namespace

GgufWriter::GgufWriter(size_t alignment) : alignment_(alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) fail("GGUF alignment {} is not a power of two", alignment);
}

void GgufWriter::set(const std::string& key, GgufValue value) {
  for (auto& [k, v] : kv_)
    if (k == key) {
      v = std::move(value);
      return;
    }
  kv_.emplace_back(key, std::move(value));
}

void GgufWriter::add_tensor(const std::string& name, uint32_t ggml_type, const std::vector<int64_t>& shape,
                            Fill fill) {
  const GgmlTypeInfo* ti = ggml_type_info(ggml_type);
  if (!ti) fail("GGUF writer: tensor {} has unknown type id {}", name, ggml_type);
  if (shape.size() > 4) fail("GGUF writer: tensor {} has {} dimensions (at most 4)", name, shape.size());
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const int64_t row = shape.empty() ? 1 : shape.back();
  if (row % ti->block_size != 0)
    fail("GGUF writer: tensor {} has rows of {} elements, not a multiple of the {} block {}", name, row, ti->name,
         ti->block_size);
  for (const auto& t : tensors_)
    if (t.name == name) fail("GGUF writer: tensor {} added twice", name);
  tensors_.push_back({name, ggml_type, shape, size_t(numel / ti->block_size) * ti->block_bytes, std::move(fill)});
}

void GgufWriter::add_tensor(const std::string& name, uint32_t ggml_type, const std::vector<int64_t>& shape,
                            const void* data, size_t nbytes) {
  add_tensor(name, ggml_type, shape, [data, nbytes](uint8_t* dst) { std::memcpy(dst, data, nbytes); });
  if (tensors_.back().nbytes != nbytes)
    fail("GGUF writer: tensor {} has {} bytes, its shape and type need {}", name, nbytes, tensors_.back().nbytes);
}

void GgufWriter::write(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  try {
    Out o(tmp, path);
    o.put<uint32_t>(kGgufMagic);
    o.put<uint32_t>(kGgufVersion);
    o.put<uint64_t>(tensors_.size());
    // general.alignment is written only when it differs from the default, as llama.cpp does.
    const bool alignment_kv = alignment_ != 32;
    o.put<uint64_t>(kv_.size() + (alignment_kv ? 1 : 0));
    for (const auto& [k, v] : kv_) {
      if (k == "general.alignment") fail("{}: general.alignment is set by the writer", path);
      o.str(k);
      write_value(o, v, true);
    }
    if (alignment_kv) {
      o.str("general.alignment");
      write_value(o, GgufValue::make_u32(uint32_t(alignment_)), true);
    }
    uint64_t offset = 0;
    for (const auto& t : tensors_) {
      o.str(t.name);
      o.put<uint32_t>(uint32_t(t.shape.size()));
      for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) o.put<uint64_t>(uint64_t(*it));
      o.put<uint32_t>(t.ggml_type);
      o.put<uint64_t>(offset);
      offset += (t.nbytes + alignment_ - 1) / alignment_ * alignment_;
    }
    o.pad_to(alignment_);
    std::vector<uint8_t> buf;
    for (const auto& t : tensors_) {
      buf.assign(t.nbytes, 0);
      t.fill(buf.data());
      o.bytes(buf.data(), buf.size());
      o.pad_to(alignment_);
    }
    o.close();
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) fail("{}: cannot rename {} into place: {}", path, tmp, ec.message());
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}

void permute_qk_rows(const uint8_t* src, uint8_t* dst, int64_t n_heads, int64_t head_dim, size_t row_bytes,
                     bool to_gguf) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    const int64_t base = h * head_dim;
    for (int64_t j = 0; j < 2; ++j)
      for (int64_t i = 0; i < half; ++i) {
        const int64_t hf_row = base + j * half + i;
        const int64_t gguf_row = base + 2 * i + j;
        const int64_t from = to_gguf ? hf_row : gguf_row;
        const int64_t to = to_gguf ? gguf_row : hf_row;
        std::memcpy(dst + size_t(to) * row_bytes, src + size_t(from) * row_bytes, row_bytes);
      }
  }
}

}  // namespace anybit
