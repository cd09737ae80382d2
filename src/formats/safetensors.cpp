#include "formats/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"

namespace anybit {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

DType parse_dtype(const std::string& s, const std::string& path, const std::string& name) {
  if (s == "F32") return DType::F32;
  if (s == "F16") return DType::F16;
  if (s == "BF16") return DType::BF16;
  if (s == "I32") return DType::I32;
  if (s == "I64") return DType::I64;
  fail("{}: tensor {} has unsupported dtype {} (supported: F32, F16, BF16)", path, name, s);
}

}  // namespace

void read_safetensors_file(const std::string& path, TensorStore& store) {
  auto file = MappedFile::open(path);
  const size_t size = file->size();
  if (size < 8) fail("{}: truncated safetensors file ({} bytes, no header)", path, size);
  uint64_t header_len = 0;
  std::memcpy(&header_len, file->data(), 8);
  if (header_len > size - 8) fail("{}: truncated safetensors file (header of {} bytes, file has {})", path, header_len, size);
  if (header_len > (100u << 20)) fail("{}: safetensors header too large ({} bytes)", path, header_len);
  json header;
  try {
    header = json::parse(file->data() + 8, file->data() + 8 + header_len);
  } catch (const json::exception& e) {
    fail("{}: corrupted safetensors header: {}", path, e.what());
  }
  if (!header.is_object()) fail("{}: safetensors header is not a JSON object", path);
  const uint8_t* base = file->data() + 8 + header_len;
  const size_t data_size = size - 8 - header_len;

  std::vector<std::pair<size_t, size_t>> ranges;
  for (auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    try {
      TensorView t;
      t.name = name;
      t.dtype = parse_dtype(info.at("dtype").get<std::string>(), path, name);
      for (const auto& d : info.at("shape")) {
        const int64_t v = d.get<int64_t>();
        if (v < 0) fail("{}: tensor {} has a negative dimension", path, name);
        t.shape.push_back(v);
      }
      const auto& offs = info.at("data_offsets");
      if (!offs.is_array() || offs.size() != 2) fail("{}: tensor {} has malformed data_offsets", path, name);
      const uint64_t begin = offs[0].get<uint64_t>(), end = offs[1].get<uint64_t>();
      if (begin > end || end > data_size)
        fail("{}: tensor {} data [{}, {}) lies outside the file's {} data bytes (truncated file?)", path, name,
             begin, end, data_size);
      const int64_t numel = t.numel();
      const size_t want = dtype_row_bytes(t.dtype, numel);
      if (end - begin != want)
        fail("{}: tensor {} has {} bytes, its shape {} and dtype {} need {}", path, name, end - begin,
             t.shape_str(), dtype_name(t.dtype), want);
      t.data = base + begin;
      t.nbytes = want;
      ranges.emplace_back(begin, end);
      store.add(std::move(t));
    } catch (const json::exception& e) {
      fail("{}: malformed entry for tensor {}: {}", path, name, e.what());
    }
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) fail("{}: tensors overlap in the data section", path);
  store.keep_alive(std::move(file));
}

void read_safetensors_dir(const std::string& dir, TensorStore& store) {
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  std::vector<std::string> files;
  if (fs::exists(index)) {
    json j;
    try {
      j = json::parse(read_text_file(index.string()));
      std::set<std::string> shards;
      for (auto& [_, shard] : j.at("weight_map").items()) shards.insert(shard.get<std::string>());
      for (const auto& s : shards) {
        if (s.find('/') != std::string::npos || s.find("..") != std::string::npos)
          fail("{}: shard name {} leaves the model folder", index.string(), s);
        files.push_back((fs::path(dir) / s).string());
      }
    } catch (const json::exception& e) {
      fail("{}: malformed index: {}", index.string(), e.what());
    }
  } else {
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".safetensors") files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
  }
  if (files.empty()) fail("{}: no .safetensors files in the model folder", dir);
  for (const auto& f : files) read_safetensors_file(f, store);
}

}  // namespace anybit
