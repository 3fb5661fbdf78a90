#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"

namespace moe::io {

namespace {

constexpr uint64_t kMaxHeaderBytes = uint64_t(100) << 20;

// Element sizes of every dtype the format defines; unknown names are rejected.
int dtype_bytes(const std::string& d) {
  static const std::map<std::string, int> sizes = {
      {"BOOL", 1}, {"U8", 1}, {"I8", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},
      {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4}, {"I64", 8}, {"U64", 8}, {"F64", 8}};
  auto it = sizes.find(d);
  return it == sizes.end() ? 0 : it->second;
}

std::string shape_text(const std::vector<int64_t>& s) { return shape_str(Shape(s.begin(), s.end())); }

}  // namespace

SafetensorsHeader parse_safetensors_header(const unsigned char* data, size_t size, const std::string& path) {
  if (size < 8) throw_input("{}: {} bytes is too short for a safetensors file (truncated?)", path, size);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > kMaxHeaderBytes) throw_input("{}: header length {} exceeds the 100 MB limit (corrupt file?)", path, n);
  if (n > size - 8)
    throw_input("{}: header length {} is longer than the file ({} bytes): the file is truncated or corrupt", path, n,
                size);
  const uint64_t data_start = 8 + n, data_size = size - data_start;
  auto j = nlohmann::json::parse(data + 8, data + 8 + n, nullptr, false);
  if (j.is_discarded()) throw_input("{}: header is not valid JSON (corrupt file?)", path);
  if (!j.is_object()) throw_input("{}: header must be a JSON object", path);

  SafetensorsHeader h;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw_input("{}: __metadata__ must be an object of strings", path);
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) throw_input("{}: __metadata__ value '{}' must be a string", path, m.key());
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets") || v.size() != 3)
      throw_input("{}: tensor '{}' must have exactly dtype, shape and data_offsets", path, name);
    TensorInfo t;
    t.name = name;
    if (!v["dtype"].is_string()) throw_input("{}: tensor '{}': dtype must be a string", path, name);
    t.dtype = v["dtype"].get<std::string>();
    const int es = dtype_bytes(t.dtype);
    if (es == 0) throw_input("{}: tensor '{}': unknown dtype '{}'", path, name, t.dtype);
    if (!v["shape"].is_array()) throw_input("{}: tensor '{}': shape must be a list", path, name);
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) throw_input("{}: tensor '{}': shape entries must be non-negative integers", path, name);
      uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && numel > (uint64_t(1) << 62) / dim)
        throw_input("{}: tensor '{}': shape {} overflows", path, name, v["shape"].dump());
      numel *= dim;
      t.shape.push_back(int64_t(dim));
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw_input("{}: tensor '{}': data_offsets must be [begin, end]", path, name);
    const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (b > e) throw_input("{}: tensor '{}': data_offsets [{}, {}] end before they begin", path, name, b, e);
    if (e > data_size)
      throw_input("{}: tensor '{}': data_offsets [{}, {}] run past the end of the data ({} bytes; truncated file?)",
                  path, name, b, e, data_size);
    if (e - b != numel * uint64_t(es))
      throw_input("{}: tensor '{}': data_offsets [{}, {}] hold {} bytes but shape {} of {} needs {}", path, name, b, e,
                  e - b, shape_text(t.shape), t.dtype, numel * uint64_t(es));
    t.begin = data_start + b, t.end = data_start + e;
    h.tensors.push_back(std::move(t));
  }
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : h.tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin || (a->begin == b->begin && a->end < b->end); });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i]->begin < by_offset[i - 1]->end)
      throw_input("{}: tensors '{}' and '{}' overlap in the file (corrupt header)", path, by_offset[i - 1]->name,
                  by_offset[i]->name);
  return h;
}

}  // namespace moe::io
