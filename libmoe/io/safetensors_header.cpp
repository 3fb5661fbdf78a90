// The safetensors header parser: every check the format implies, before any byte is used.
#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "io/safetensors.h"

namespace moe::io {

namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = uint64_t(100) << 20;
constexpr const char* kKnownDtypes =
    "BOOL, U8, I8, I16, U16, I32, U32, I64, U64, F8_E4M3, F8_E5M2, F16, BF16, F32, F64";

std::string shape_text(const std::vector<int64_t>& s) { return shape_str(Shape(s.begin(), s.end())); }

// Parses the JSON text of the header, refusing duplicate keys at any depth (a JSON object
// with the same key twice would otherwise silently keep one of them) and recording the
// top-level keys in file order (the parsed object is sorted by key).
json parse_header_json(const unsigned char* first, const unsigned char* last, const std::string& path,
                       std::vector<std::string>* top_keys) {
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  auto cb = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start: open_objects.emplace_back(); break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key: {
        const std::string& key = parsed.get_ref<const std::string&>();
        if (!open_objects.empty() && !open_objects.back().insert(key).second && duplicate.empty()) duplicate = key;
        if (open_objects.size() == 1) top_keys->push_back(key);
        break;
      }
      default: break;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(first, last, cb, /*allow_exceptions=*/true);
  } catch (const json::parse_error& e) {
    throw_input("{}: header is not valid JSON (error at header byte {}; the file is corrupt or not a safetensors file)",
                path, e.byte);
  } catch (const json::exception& e) {
    throw_input("{}: header is not valid JSON ({}; the file is corrupt or not a safetensors file)", path, e.id);
  }
  if (!duplicate.empty())
    throw_input("{}: header lists key '{}' twice, so it is ambiguous (the file is corrupt)", path, duplicate);
  return j;
}

void parse_metadata(const json& v, const std::string& path, std::map<std::string, std::string>* out) {
  if (!v.is_object())
    throw_input("{}: __metadata__ is a JSON {}, but must be an object of string values (the file is corrupt)", path,
                v.type_name());
  for (auto m = v.begin(); m != v.end(); ++m) {
    if (!m.value().is_string())
      throw_input("{}: __metadata__ entry '{}' is a JSON {}, but metadata values must be strings", path, m.key(),
                  m.value().type_name());
    (*out)[m.key()] = m.value().get<std::string>();
  }
}

// Validates one tensor entry against the data section [data_start, data_start + data_size).
TensorInfo parse_tensor(const std::string& name, const json& v, uint64_t data_start, uint64_t data_size,
                        const std::string& path) {
  if (!v.is_object())
    throw_input("{}: tensor '{}' is a JSON {}, but must be an object with dtype, shape and data_offsets", path, name,
                v.type_name());
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!v.contains(field)) throw_input("{}: tensor '{}' has no '{}' field (the file is corrupt)", path, name, field);
  if (v.size() != 3) {
    for (auto it = v.begin(); it != v.end(); ++it)
      if (it.key() != "dtype" && it.key() != "shape" && it.key() != "data_offsets")
        throw_input("{}: tensor '{}' has an unexpected field '{}' (only dtype, shape and data_offsets are allowed)",
                    path, name, it.key());
  }
  TensorInfo t;
  t.name = name;

  const json& dtype = v.at("dtype");
  if (!dtype.is_string())
    throw_input("{}: tensor '{}': dtype is a JSON {}, not a string", path, name, dtype.type_name());
  t.dtype = dtype.get<std::string>();
  const int elem = safetensors_dtype_size(t.dtype);
  if (elem == 0)
    throw_input("{}: tensor '{}': unknown dtype '{}' (safetensors defines {})", path, name, t.dtype, kKnownDtypes);

  const json& shape = v.at("shape");
  if (!shape.is_array()) throw_input("{}: tensor '{}': shape is a JSON {}, not a list", path, name, shape.type_name());
  constexpr uint64_t kMaxElems = uint64_t(std::numeric_limits<int64_t>::max());
  for (const auto& d : shape) {
    if (!d.is_number_unsigned())
      throw_input("{}: tensor '{}': shape {} must hold non-negative integers", path, name, shape.dump());
    const uint64_t dim = d.get<uint64_t>();
    if (dim > kMaxElems) throw_input("{}: tensor '{}': shape {} has a dimension beyond 2^63", path, name, shape.dump());
    t.shape.push_back(int64_t(dim));
  }
  // Checked product; a zero dimension anywhere makes it 0 whatever the others are.
  uint64_t numel = 1;
  if (std::find(t.shape.begin(), t.shape.end(), 0) != t.shape.end()) {
    numel = 0;
  } else {
    for (int64_t dim : t.shape) {
      if (numel > kMaxElems / uint64_t(dim))
        throw_input("{}: tensor '{}': shape {} has more elements than fit in 64 bits (the file is corrupt)", path, name,
                    shape.dump());
      numel *= uint64_t(dim);
    }
  }
  if (numel > std::numeric_limits<uint64_t>::max() / uint64_t(elem))
    throw_input("{}: tensor '{}': shape {} of {} needs more bytes than fit in 64 bits (the file is corrupt)", path,
                name, shape.dump(), t.dtype);
  const uint64_t need = numel * uint64_t(elem);

  const json& off = v.at("data_offsets");
  if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
    throw_input("{}: tensor '{}': data_offsets {} must be [begin, end], two non-negative integers", path, name,
                off.dump());
  const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
  if (b > e)
    throw_input("{}: tensor '{}': data_offsets [{}, {}] end before they begin (the file is corrupt)", path, name, b, e);
  if (e > data_size)
    throw_input(
        "{}: tensor '{}': data_offsets [{}, {}] run past the end of the data section ({} bytes) (the file is corrupt or "
        "was truncated)",
        path, name, b, e, data_size);
  if (e - b != need)
    throw_input(
        "{}: tensor '{}': data_offsets [{}, {}] hold {} bytes but shape {} of {} needs {} (the file is corrupt or was "
        "truncated)",
        path, name, b, e, e - b, shape_text(t.shape), t.dtype, need);
  t.begin = data_start + b;
  t.end = data_start + e;
  return t;
}

}  // namespace

int safetensors_dtype_size(const std::string& d) {
  static const std::map<std::string, int> sizes = {{"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1},
                                                   {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
                                                   {"U32", 4},  {"F32", 4}, {"I64", 8}, {"U64", 8},     {"F64", 8}};
  auto it = sizes.find(d);
  return it == sizes.end() ? 0 : it->second;
}

SafetensorsHeader parse_safetensors_header(const unsigned char* data, size_t size, const std::string& path) {
  if (size < 8)
    throw_input(
        "{}: {} bytes is too short for a safetensors file, which starts with an 8-byte header length (the file "
        "is truncated or empty)",
        path, size);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > kMaxHeaderBytes)
    throw_input("{}: header length {} exceeds the 100 MB limit (the file is corrupt or not a safetensors file)", path,
                n);
  if (n > size - 8)
    throw_input("{}: header length {} is longer than the file ({} bytes) (the file is corrupt or was truncated)", path,
                n, size);
  const uint64_t data_start = 8 + n, data_size = size - data_start;

  std::vector<std::string> order;
  const json j = parse_header_json(data + 8, data + 8 + n, path, &order);
  if (!j.is_object())
    throw_input("{}: header is a JSON {}, but must be a JSON object (the file is corrupt or not a safetensors file)",
                path, j.type_name());

  SafetensorsHeader h;
  h.tensors.reserve(order.size());
  for (const std::string& name : order) {
    const json& v = j.find(name).value();
    if (name == "__metadata__") parse_metadata(v, path, &h.metadata);
    else h.tensors.push_back(parse_tensor(name, v, data_start, data_size, path));
  }

  // Ranges may leave gaps but must not overlap: sort by begin and compare neighbours. Empty
  // ranges overlap nothing.
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : h.tensors)
    if (t.end > t.begin) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo &a = *by_offset[i - 1], &b = *by_offset[i];
    if (b.begin < a.end)
      throw_input(
          "{}: tensors '{}' (data_offsets [{}, {}]) and '{}' (data_offsets [{}, {}]) overlap (the file is corrupt)",
          path, a.name, a.begin - data_start, a.end - data_start, b.name, b.begin - data_start, b.end - data_start);
  }
  return h;
}

}  // namespace moe::io
