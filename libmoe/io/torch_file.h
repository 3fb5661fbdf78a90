// PyTorch's zip checkpoint format (torch.save since 1.6), written and read without Python:
// archive/data.pkl (pickle protocol 2, see pickle.h), archive/data/<key> raw storages aligned
// to 64 bytes, archive/byteorder, archive/version. Reading maps the file and hands out tensors
// that borrow it. Used for Megatron's model_optim_rng.pt and HF pytorch_model.bin files.
// Every entry read is checked against its zip CRC-32, so a flipped bit is refused, not used.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/mapped_file.h"
#include "io/pickle.h"

namespace moe::io {

// Streams a torch.save-compatible file: data.pkl first (it only names storages), then each
// storage as it is produced, so a whole rank never has to sit in memory. Written to
// `path`.tmp and renamed by finish(); a writer destroyed before finish() leaves nothing.
// Entries or files past 4 GiB get zip64 records, as torch.save writes them.
class TorchFileWriter {
 public:
  TorchFileWriter(const std::string& path, const PyValue& root);
  // An archive written into `out` from byte `base` on, as torch.save into an open stream does
  // (PyTorch's distributed checkpoint items): finish() returns its length; nothing is renamed.
  TorchFileWriter(OutputFile& out, uint64_t base, const PyValue& root);
  ~TorchFileWriter();
  TorchFileWriter(const TorchFileWriter&) = delete;
  TorchFileWriter& operator=(const TorchFileWriter&) = delete;
  void add_storage(const std::string& key, const Tensor& t);
  // A storage whose bytes are `n` bytes at `offset` of a mapped file: read with pread (never
  // through the mapping, so RSS does not grow), checksummed and written in one pass, two
  // threads each taking half of a large storage.
  void add_storage_from(const std::string& key, const MappedFile& src, uint64_t offset, size_t n);
  // The same for a storage made of byte ranges of files one after another (a fused tensor
  // whose parts are stored as they are: gate then up, or QKV rows per query group).
  struct FileBytes {
    const MappedFile* file;
    uint64_t offset;
    size_t size;
  };
  void add_storage_from(const std::string& key, const std::vector<FileBytes>& runs);
  // A storage of `size` bytes that `fill` produces in order through the sink: bytes in memory,
  // or runs of files copied by the kernel. Checksummed as they pass; a sink that ends short or
  // overruns `size` is an internal error.
  class Sink {
   public:
    virtual ~Sink() = default;
    virtual void write(const void* p, size_t n) = 0;
    virtual void copy(const std::vector<FileBytes>& runs) = 0;
  };
  void add_storage_streamed(const std::string& key, size_t size, const std::function<void(Sink&)>& fill);
  // Returns the archive's length in bytes.
  uint64_t finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The same in one call, for storages already in memory.
void write_torch_file(const std::string& path, const PyValue& root,
                      const std::vector<std::pair<std::string, Tensor>>& storages);

class TorchFile {
 public:
  // InputError naming `path` for a malformed zip, a compressed entry, a missing data.pkl, a
  // data.pkl whose CRC-32 does not match or a pickle outside what checkpoints use. `classes`:
  // further globals its pickle may name (pickle_loads), e.g. torch dtypes used as dict keys.
  static TorchFile open(const std::string& path, const std::vector<std::string>& classes = {});
  // The archive that lies at bytes [base, base + length) of `file` (an item of a PyTorch
  // distributed checkpoint's .distcp file); errors name `where`.
  static TorchFile open_range(std::shared_ptr<MappedFile> file, uint64_t base, uint64_t length,
                              const std::string& where, const std::vector<std::string>& classes = {});
  const PyPtr& root() const { return root_; }
  // The tensor a TensorRef describes, borrowing the mapped file. Contiguous tensors only.
  // The first call for a storage checks the whole storage entry's CRC-32 (read with pread, on
  // two threads when large, so the mapping gains no pages) and throws InputError naming the
  // file and the entry on a mismatch; later calls for it cost nothing. Thread-safe.
  Tensor tensor(const TensorRef& ref) const;
  // Where that tensor's bytes lie in the file: (offset, size), checked as tensor() checks them
  // but not checksummed (a layout check of every piece must not read the data): callers that
  // copy those bytes get them through tensor() first, or call verify().
  std::pair<size_t, size_t> locate(const TensorRef& ref) const;
  // The CRC-32 check tensor() does for the storage `ref` lies on.
  void verify(const TensorRef& ref) const;
  // The mapping (for copies file to file, and MappedFile::drop_pages once a tensor is used).
  const MappedFile& mapped() const { return *file_; }

 private:
  std::shared_ptr<MappedFile> file_;
  std::string prefix_;  // "archive/" or whatever top folder torch.save used
  struct Entry {
    std::string name;
    size_t offset, size;  // of the data
    uint32_t crc;         // from the central directory
  };
  std::vector<Entry> entries_;
  // entry -> its data matched its CRC once; shared by copies of this TorchFile
  std::shared_ptr<std::atomic<bool>[]> verified_;
  PyPtr root_;
  const Entry* entry(const std::string& name) const;
  const Entry& storage_entry(const TensorRef& ref) const;
};

}  // namespace moe::io
