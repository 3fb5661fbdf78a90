// Megatron-Core's `torch_dist` checkpoint format (reference/megatron-format.md section 2): an
// iteration dir holding metadata.json, common.pt, a PyTorch distributed-checkpoint `.metadata`
// pickle and `__R_I.distcp` files whose items are torch.save archives of tensor chunks (or of
// byte objects). Read by every command that takes a Megatron dir, written by export --to_mcore
// and by pt/sft; the names and global shapes are Megatron's sharded keys (no `model.` prefix,
// the layer axis stacked, experts on their own axis), so the content does not depend on the
// parallel layout that wrote it.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "core/tensor.h"
#include "io/pickle.h"
#include "io/torch_file.h"
#include "model/model_config.h"

namespace moe::checkpoint {

enum class CkptFormat { kTorch, kTorchDist };
// "torch" | "torch_dist"; InputError naming `flag` otherwise.
CkptFormat parse_ckpt_format(const std::string& flag, const std::string& value);

// DIR/iter_NNNNNNN for the iteration DIR's tracker names.
std::filesystem::path checkpoint_iteration_dir(const std::string& mcore_dir);
// Megatron's rule (checkpointing.py _get_checkpoint_format): a metadata.json that parses =>
// torch_dist (InputError for any backend but torch_dist); else mp_rank_* dirs => torch; else
// InputError naming the dir.
CkptFormat detect_checkpoint_format(const std::filesystem::path& iter_dir);

// Where a canonical tensor lives: the sharded key, its index along the leading (layer, expert)
// axes and the global shape of the key (those axes, then the tensor's own shape).
struct DistKey {
  std::string fqn;
  std::vector<int64_t> index;
  Shape global;
};
// `stored_shape`: the canonical tensor's shape as stored (vocabulary rows padded). Layers are
// stacked when every layer has the same kind (all MoE or all dense), else keep their number.
DistKey dist_key(const model::ModelConfig& c, const std::string& canonical, const Shape& stored_shape);
// The `_extra_state` objects (unique keys, `key/shard_OFFSETS_SHAPE`) a TE-spec GPTModel requests.
std::vector<std::string> dist_extra_state_keys(const model::ModelConfig& c);
// torch.save([torch.empty(0, dtype=torch.uint8)]): TransformerEngine 2's empty extra state.
io::PyPtr empty_extra_state();

// ---------------------------------------------------------------------------------------------
// Writing

// One chunk of a tensor a rank writes: box [offsets, offsets + sizes) of the key's global shape,
// its bytes (row-major, `dtype`) produced by `fill`.
struct DistChunk {
  std::string fqn;
  Shape global;
  DType dtype;
  std::vector<int64_t> offsets;
  Shape sizes;
  std::function<void(io::TorchFileWriter::Sink&)> fill;
  uint64_t nbytes() const { return uint64_t(shape_numel(sizes)) * dtype_size(dtype); }
};
// A byte item: torch.save of `value` under its unique key.
struct DistObject {
  std::string key;
  io::PyPtr value;
};
// Where one item was written (what .metadata records).
struct DistRecord {
  std::string fqn;
  bool is_bytes = false;
  Shape global;
  DType dtype = DType::F32;
  std::vector<int64_t> offsets;
  Shape sizes;
  std::string file;
  uint64_t offset = 0, length = 0;
};

// Writes `chunks` and `objects` into `thread_count` files DIR/__RANK_I.distcp, one thread each,
// items spread by size. `progress(bytes)` is called after each chunk (from any of the threads,
// serialised). Returns the records of every item.
std::vector<DistRecord> write_dist_files(const std::filesystem::path& dir, int rank, int thread_count,
                                         std::vector<DistChunk> chunks, const std::vector<DistObject>& objects,
                                         const std::function<void(uint64_t)>& progress = {});
// The records of one rank, kept beside the files until the coordinator gathers them.
void write_dist_records(const std::filesystem::path& dir, int rank, const std::vector<DistRecord>& records);
std::vector<DistRecord> read_dist_records(const std::filesystem::path& dir);  // every rank's, then removed
// The coordinator's part, after every rank's files: `.metadata` from the records, then
// metadata.json last (what makes the dir a torch_dist checkpoint). common.pt is written before.
void finish_dist_checkpoint(const std::filesystem::path& dir, const std::vector<DistRecord>& records);

// ---------------------------------------------------------------------------------------------
// Reading

// A torch_dist iteration dir opened for reading: `.metadata` unpickled with only PyTorch's
// checkpoint metadata classes allowed and checked whole on open (every chunk inside its global
// shape, no gap or overlap, every byte range inside an existing .distcp file); items are read on
// request straight from their byte ranges. Thread-safe after construction.
class DistReader {
 public:
  explicit DistReader(const std::filesystem::path& iter_dir);
  ~DistReader();
  bool has(const std::string& fqn) const { return tensors_.count(fqn) != 0; }
  bool has_object(const std::string& key) const { return objects_.count(key) != 0; }
  // Global shape and dtype of a tensor key (InputError naming .metadata and the key if absent).
  const Shape& shape(const std::string& fqn) const;
  DType dtype(const std::string& fqn) const;
  // Where a tensor read() returns lies, when it borrows a .distcp file.
  struct Stored {
    const MappedFile* file = nullptr;
    uint64_t offset = 0, size = 0;
  };
  // The sub-tensor at `index` along the leading axes (shape: the global shape past them), in
  // `dtype`. Borrows the mapped file when one chunk holds it whole in that dtype (and sets
  // `stored`), else assembles it from every chunk it overlaps.
  Tensor read(const std::string& fqn, const std::vector<int64_t>& index, DType dtype, Stored* stored = nullptr) const;
  // A byte item, torch.load-ed (a list for Megatron's objects).
  io::PyPtr object(const std::string& key) const;
  // common.pt's root (InputError if missing).
  io::PyPtr common() const;
  const std::filesystem::path& dir() const { return dir_; }
  // Lets go of the mapped pages a read() used (they stay in the page cache).
  void release(const Stored& s) const;

 private:
  struct Chunk {
    std::vector<int64_t> offsets;
    Shape sizes;
    size_t file;
    uint64_t offset, length;
  };
  struct TensorMeta {
    Shape global;
    DType dtype;
    std::vector<Chunk> chunks;
  };
  struct Item {
    size_t file;
    uint64_t offset, length;
  };
  const io::TorchFile& archive(size_t file, uint64_t offset, uint64_t length) const;
  const TensorMeta& meta(const std::string& fqn) const;
  std::filesystem::path dir_;
  std::vector<std::shared_ptr<MappedFile>> files_;
  std::vector<std::string> file_names_;
  std::map<std::string, TensorMeta> tensors_;
  std::map<std::string, Item> objects_;
  mutable std::mutex mu_;
  mutable std::map<std::pair<size_t, uint64_t>, std::unique_ptr<io::TorchFile>> open_;
};

}  // namespace moe::checkpoint
