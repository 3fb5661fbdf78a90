#include "core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace moe {

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_input("{}: cannot open: {}", path, std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw_input("{}: not a regular file", path);
  }
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = size_t(st.st_size);
  if (f->size_ > 0) {
    void* p = mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      throw_input("{}: cannot map into memory: {}", path, std::strerror(e));
    }
    f->data_ = static_cast<const unsigned char*>(p);
  }
  ::close(fd);
  return f;
}

void MappedFile::advise_sequential() const {
  if (data_) madvise(const_cast<unsigned char*>(data_), size_, MADV_SEQUENTIAL);
}

void MappedFile::drop_pages(size_t offset, size_t n) const {
  if (!data_ || offset >= size_) return;
  n = std::min(n, size_ - offset);
  // Whole pages: a page shared with a neighbouring tensor is simply faulted back if used again.
  static const size_t page = size_t(sysconf(_SC_PAGESIZE));
  const size_t begin = offset / page * page, end = std::min(size_, (offset + n + page - 1) / page * page);
  if (end > begin) madvise(const_cast<unsigned char*>(data_) + begin, end - begin, MADV_DONTNEED);
}

MappedFile::~MappedFile() {
  if (data_) munmap(const_cast<unsigned char*>(data_), size_);
}

OutputFile::OutputFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw_input("{}: cannot create: {} (check that the directory is writable)", path, std::strerror(errno));
}

OutputFile::~OutputFile() {
  if (fd_ >= 0) ::close(fd_);
}

void OutputFile::write_at(uint64_t offset, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd_, p, std::min<size_t>(n, size_t(1) << 30), off_t(offset));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) throw_input("{}: write failed: {} (disk full?)", path_, std::strerror(w < 0 ? errno : EIO));
    p += w, offset += uint64_t(w), n -= size_t(w);
  }
}

void OutputFile::copy_at(uint64_t offset, const MappedFile& src, uint64_t src_offset, size_t n) {
  MOE_ASSERT(src_offset + n <= src.size(), "copy_at past the end of {}", src.path());
  if (const int in = ::open(src.path().c_str(), O_RDONLY | O_CLOEXEC); in >= 0) {
    loff_t from = loff_t(src_offset), to = loff_t(offset);
    // A fresh descriptor starts with a small read-ahead window; asking for the whole range up
    // front lets a cold file be read in large requests, as cp's single long copy is.
    posix_fadvise(in, off_t(src_offset), off_t(n), POSIX_FADV_WILLNEED);
    while (n > 0) {
      const ssize_t c = ::copy_file_range(in, &from, fd_, &to, n, 0);
      if (c < 0 && errno == EINTR) continue;
      if (c <= 0) break;  // not supported here: the rest goes through the mapping
      n -= size_t(c);
    }
    ::close(in);
    src_offset = uint64_t(from), offset = uint64_t(to);
  }
  if (n > 0) {
    write_at(offset, src.data() + src_offset, n);
    src.drop_pages(src_offset, n);
  }
}

void OutputFile::close() {
  if (fd_ < 0) return;
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) throw_input("{}: write failed: {} (disk full?)", path_, std::strerror(errno));
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_input("{}: cannot open: {}", path, std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  std::string tmp = path + ".tmp." + std::to_string(getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw_input("{}: cannot create: {}", tmp, std::strerror(errno));
    out.write(contents.data(), std::streamsize(contents.size()));
    out.flush();
    if (!out) throw_input("{}: write failed: {}", tmp, std::strerror(errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw_input("{}: cannot rename into place: {}", path, std::strerror(errno));
}

}  // namespace moe
