// safetensors files: a validating header parser, a zero-copy reader (mmap), a model
// directory reader (single file or sharded with model.safetensors.index.json) and writers.
// Nothing read is trusted: lengths, JSON shape, dtypes, shapes x dtype sizes and byte ranges
// are all checked before a byte of tensor data is used. Errors are InputErrors naming the file.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/mapped_file.h"
#include "core/tensor.h"

namespace moe::io {

struct TensorInfo {
  std::string name;
  std::string dtype;           // safetensors spelling (F32, BF16, I64, ...)
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0; // absolute byte offsets in the file
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in header order
  std::map<std::string, std::string> metadata;
};

// Parses and validates the header of a safetensors file held in `data[0, size)`. `path` only
// names the file in errors. This is the fuzz target.
SafetensorsHeader parse_safetensors_header(const unsigned char* data, size_t size, const std::string& path);

// One mapped safetensors file.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  const std::string& path() const { return file_->path(); }
  const SafetensorsHeader& header() const { return header_; }
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  // A tensor borrowing the mapping (kept alive by the tensor). F32/BF16/F16 only.
  Tensor get(const std::string& name) const;

 private:
  std::shared_ptr<MappedFile> file_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
};

// The weights of an HF model directory: model.safetensors, or the shards named by
// model.safetensors.index.json.
class SafetensorsCheckpoint {
 public:
  static SafetensorsCheckpoint open_dir(const std::string& dir);
  const std::vector<std::string>& names() const { return names_; }  // sorted
  bool has(const std::string& name) const { return where_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  Tensor get(const std::string& name) const;
  const std::string& file_of(const std::string& name) const;

 private:
  const SafetensorsFile& file(const std::string& name) const;
  std::string dir_;
  std::vector<std::string> names_;
  std::map<std::string, std::shared_ptr<SafetensorsFile>> where_;
};

// Writes one safetensors file: to `path`.tmp, then renamed, so an interrupted write never
// leaves a complete-looking file. Tensors are streamed in the given order.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Writes tensors one by one into shards of at most `max_shard_bytes` (a tensor larger than
// that gets a shard of its own): model-0000N-of-0000M.safetensors + model.safetensors.index.json,
// or a single model.safetensors without index when everything fits, as transformers does.
class ShardedSafetensorsWriter {
 public:
  ShardedSafetensorsWriter(std::string dir, uint64_t max_shard_bytes);
  void add(const std::string& name, const Tensor& t);
  void finish();

 private:
  void flush_shard();
  std::string dir_;
  uint64_t max_bytes_, shard_bytes_ = 0, total_bytes_ = 0;
  std::vector<std::pair<std::string, Tensor>> pending_;
  std::vector<std::vector<std::string>> shard_names_;
  std::vector<std::string> shard_tmp_files_;
};

}  // namespace moe::io
