// A read-only memory map of a whole file. Tensors read from safetensors borrow from it and
// keep it alive through a shared_ptr, so weights are used in place (zero copy).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace moe {

class MappedFile {
 public:
  // Throws InputError naming `path` if it cannot be opened or mapped.
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const unsigned char* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Streaming readers: the kernel may read ahead aggressively.
  void advise_sequential() const;
  // Unmaps the pages of [offset, offset + n) from this process (they stay in the page cache and
  // are faulted back in if read again), so a file streamed once does not grow the resident set
  // to its whole size. Out-of-range parts are ignored.
  void drop_pages(size_t offset, size_t n) const;

 private:
  MappedFile() = default;
  std::string path_;
  const unsigned char* data_ = nullptr;
  size_t size_ = 0;
};

// A file written at known offsets (pwrite), possibly from several threads at once. Created
// (truncated) at construction; closed by close() or the destructor. InputError naming the
// path on any failure (disk full, ...).
class OutputFile {
 public:
  explicit OutputFile(const std::string& path);
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  const std::string& path() const { return path_; }
  void write_at(uint64_t offset, const void* data, size_t n);
  // Copies `n` bytes at `src_offset` of the mapped file `src` into this file at `offset`, in the
  // kernel where it can (copy_file_range: no copy through this process, no resident pages).
  void copy_at(uint64_t offset, const MappedFile& src, uint64_t src_offset, size_t n);
  void close();

 private:
  std::string path_;
  int fd_ = -1;
};

// Reads a whole (small) text file; InputError naming the path if it cannot be read.
std::string read_text_file(const std::string& path);
// Writes via a temporary name and rename, so readers never see a half-written file.
void write_file_atomic(const std::string& path, const std::string& contents);

}  // namespace moe
