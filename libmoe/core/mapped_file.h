// A read-only memory map of a whole file. Tensors read from safetensors borrow from it and
// keep it alive through a shared_ptr, so weights are used in place (zero copy).
#pragma once
#include <cstddef>
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

 private:
  MappedFile() = default;
  std::string path_;
  const unsigned char* data_ = nullptr;
  size_t size_ = 0;
};

// Reads a whole (small) text file; InputError naming the path if it cannot be read.
std::string read_text_file(const std::string& path);
// Writes via a temporary name and rename, so readers never see a half-written file.
void write_file_atomic(const std::string& path, const std::string& contents);

}  // namespace moe
