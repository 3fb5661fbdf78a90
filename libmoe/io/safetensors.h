// safetensors files (https://github.com/huggingface/safetensors): a validating header parser,
// a zero-copy reader over a memory map, a model-directory reader (one model.safetensors, or
// shards named by model.safetensors.index.json) and writers (one file, or shards + index).
//
// File layout: u64 little-endian header length N, N bytes of JSON header, then the data
// section. The header maps tensor name -> {dtype, shape, data_offsets [begin, end)} with
// offsets relative to the data section, plus an optional "__metadata__" string->string map.
//
// Nothing read is trusted (DESIGN.md section 4): the header length, the JSON shape, dtype
// names, shape x element size against the byte range, ranges against the data section and
// against each other are all checked before a byte of tensor data is used. Every failure is
// an InputError whose one-line message names the file, the tensor or field, and the problem.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/mapped_file.h"
#include "core/tensor.h"

namespace moe::io {

// One tensor entry of a validated header.
struct TensorInfo {
  std::string name;
  std::string dtype;            // safetensors spelling: BOOL, U8, ..., F16, BF16, F32, F64
  std::vector<int64_t> shape;   // every entry >= 0; [] is a scalar (one element)
  uint64_t begin = 0, end = 0;  // absolute byte offsets in the file: [begin, end)
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;              // in the order the JSON lists them
  std::map<std::string, std::string> metadata;  // "__metadata__", empty when absent
};

// Element size in bytes of a safetensors dtype name, or 0 for a name the format does not
// define (BOOL, U8, I8, F8_E4M3, F8_E5M2 = 1; I16, U16, F16, BF16 = 2; I32, U32, F32 = 4;
// I64, U64, F64 = 8).
int safetensors_dtype_size(const std::string& dtype);

// Parses and validates the header of a safetensors file whose complete bytes are
// `data[0, size)`; `path` only names the file in error messages. On success every tensor's
// [begin, end) lies inside the data section (so inside [0, size)), holds exactly
// numel(shape) x element-size bytes, and no two ranges overlap (gaps are allowed). Throws
// InputError otherwise; never reads outside [0, size). This is the fuzz entry point.
SafetensorsHeader parse_safetensors_header(const unsigned char* data, size_t size, const std::string& path);

// One safetensors file, memory-mapped read-only and validated at open. Tensors returned by
// get() borrow the mapping and keep it alive, so the object itself may be dropped early.
class SafetensorsFile {
 public:
  // Maps and validates `path`; InputError if it cannot be read or its header is invalid.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  const SafetensorsHeader& header() const { return header_; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  std::vector<std::string> names() const;  // in file (header) order
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  // InputError naming the file if there is no such tensor.
  const TensorInfo& info(const std::string& name) const;
  // The tensor as a moe::Tensor. F32/BF16/F16 only (InputError "dtype I64 not supported
  // for tensor ..." otherwise). Zero copy: the result points into the mapping, which it keeps
  // alive, and must not be written through (the mapping is read-only). Exception: data that
  // is not aligned to its element size (files whose writer did not pad) is copied into an
  // owned, aligned tensor, so kernels never see a misaligned pointer.
  Tensor get(const std::string& name) const;
  // The mapping, for streaming copies (MappedFile::drop_pages once a tensor has been used).
  const MappedFile& mapped() const { return *file_; }

 private:
  SafetensorsFile() = default;
  std::shared_ptr<MappedFile> file_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;  // name -> position in header_.tensors
};

// The weights of a Hugging Face model directory, found as transformers finds them:
//   1. `model.safetensors` (an index beside it is ignored, as transformers does);
//   2. else `model.safetensors.index.json`, whose "weight_map" maps tensor name -> shard
//      file in the same directory. Every shard named must exist and contain the tensors the
//      index assigns to it, and every tensor in a shard must be listed in the index;
//   3. else exactly one `*.safetensors` file (several without an index is an error).
// All files are mapped and validated by open_dir, so a broken checkpoint fails at once with
// an InputError naming the directory, the index or the shard. Tensors from get() borrow the
// mappings (see SafetensorsFile::get); the checkpoint object is cheap to copy.
class SafetensorsCheckpoint {
 public:
  static SafetensorsCheckpoint open_dir(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const std::vector<std::string>& names() const { return names_; }  // sorted
  bool has(const std::string& name) const { return where_.count(name) != 0; }
  // info/get/file_of throw InputError naming the directory for an unknown name.
  const TensorInfo& info(const std::string& name) const;
  Tensor get(const std::string& name) const;
  const std::string& file_of(const std::string& name) const;  // path of the file holding it
  // The mapped file holding it (its bytes at info(name).begin).
  const MappedFile& mapped_file_of(const std::string& name) const { return file(name).mapped(); }

 private:
  const SafetensorsFile& file(const std::string& name) const;
  std::string dir_;
  std::vector<std::string> names_;
  std::map<std::string, std::shared_ptr<SafetensorsFile>> where_;
};

// Writes one safetensors file. Tensors are laid out in the given order and streamed one at
// a time (nothing is concatenated in memory) into `path`.tmp, which is renamed to `path` only
// after every byte was written, so `path` is never a half-written file; on failure the .tmp
// is removed. The header is padded with spaces so the data section starts 8-byte aligned,
// as the Hugging Face writer does. Each tensor must be defined (CPU memory, contiguous).
// InputError on an empty, duplicate or "__metadata__" tensor name, or an I/O failure.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// A tensor to be written, described without its data (streaming writers plan files from these).
struct TensorDesc {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t nbytes() const { return uint64_t(shape_numel(shape)) * dtype_size(dtype); }
};

// The bytes write_safetensors puts before the data section (u64 length + padded JSON header)
// for these tensors, laid out in order: tensor i's data starts at the returned size plus the
// sizes of the tensors before it. Names are checked as write_safetensors checks them.
std::string safetensors_header_bytes(const std::string& path, const std::vector<TensorDesc>& tensors,
                                     const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// save_pretrained's sharding (as ShardedSafetensorsWriter does it), planned from sizes alone:
// tensors fill a shard in order until the next would pass max_shard_bytes.
struct SafetensorsShardPlan {
  std::vector<std::string> files;            // model.safetensors, or model-0000N-of-0000M.safetensors
  std::vector<std::vector<size_t>> members;  // per file, indices into the planned list, in order
  uint64_t total_bytes = 0;
};
SafetensorsShardPlan plan_safetensors_shards(const std::vector<uint64_t>& nbytes, uint64_t max_shard_bytes);
// model.safetensors.index.json for shards given as (file name, tensor names): metadata.total_size
// and a sorted weight_map, as transformers writes it.
std::string safetensors_index_json(const std::vector<std::pair<std::string, std::vector<std::string>>>& shards,
                                   uint64_t total_bytes);

// Writes a model's tensors into `dir` the way transformers' save_pretrained does: shards of
// at most `max_shard_bytes` of tensor data (a tensor larger than that gets a shard of its
// own), named model-0000N-of-0000M.safetensors, plus model.safetensors.index.json with
// metadata.total_size and a sorted weight_map; or a single model.safetensors and no index
// when everything fits in one shard (also when no tensor was added).
//
// add() keeps a reference to each tensor (no copy) until its shard is written, so at most
// about one shard of tensors is retained at a time. Shards are written as hidden partial
// files and get their final names in finish(), when M is known; finish() then removes
// model.safetensors / model-*-of-*.safetensors / index files left in `dir` by an earlier
// save that the new set does not contain, so the directory holds one consistent checkpoint.
// A writer destroyed before finish() removes its partial files. `dir` is created if needed.
class ShardedSafetensorsWriter {
 public:
  ShardedSafetensorsWriter(std::string dir, uint64_t max_shard_bytes);
  ~ShardedSafetensorsWriter();
  ShardedSafetensorsWriter(const ShardedSafetensorsWriter&) = delete;
  ShardedSafetensorsWriter& operator=(const ShardedSafetensorsWriter&) = delete;

  // InputError for a name already added (or empty / "__metadata__").
  void add(const std::string& name, const Tensor& t);
  // Writes what is pending, names the shards and writes the index. Call once; add() and
  // finish() after it are InternalErrors.
  void finish();
  // After finish(): the file names written into `dir`: the shards in order, then the index
  // (when there is one).
  const std::vector<std::string>& files() const { return files_; }

 private:
  void flush_shard();
  std::string dir_;
  uint64_t max_bytes_, shard_bytes_ = 0, total_bytes_ = 0;
  bool finished_ = false;
  std::vector<std::pair<std::string, Tensor>> pending_;
  std::vector<std::vector<std::string>> shard_names_;  // tensor names of each written shard
  std::vector<std::string> partial_files_;             // written shards under provisional names
  std::set<std::string> added_;                        // every name added so far
  std::vector<std::string> files_;
};

}  // namespace moe::io
