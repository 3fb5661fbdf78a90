#include "io/torch_file.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <thread>

#include "core/error.h"
#include "io/crc32.h"

namespace moe::io {

namespace {

constexpr size_t kCopyChunk = size_t(1) << 20;  // pread buffer of a checksumming thread

// The CRC-32 of `size` bytes computed as two contiguous halves, the second on a helper thread
// (std::thread, so no pool spins between entries on a busy machine): part(at, n, crc) returns
// `crc` extended by bytes [at, at + n), and the halves are joined with zlib's crc32_combine.
// Entries under 2 MiB stay on the calling thread. An error thrown by a part is rethrown here.
template <class Part>
uint32_t parallel_crc32(size_t size, Part&& part) {
  if (size < (size_t(2) << 20) || std::thread::hardware_concurrency() < 2) return part(0, size, 0u);
  const size_t half = (size / 2 + 4095) / 4096 * 4096;  // page aligned, so reads and writes are too
  uint32_t second = 0;
  std::exception_ptr error;
  std::thread helper([&] {
    try {
      second = part(half, size - half, 0u);
    } catch (...) {
      error = std::current_exception();
    }
  });
  uint32_t first = 0;
  try {
    first = part(0, half, 0u);
  } catch (...) {
    helper.join();
    throw;
  }
  helper.join();
  if (error) std::rethrow_exception(error);
  return uint32_t(crc32_combine(first, second, z_off_t(size - half)));
}

// `crc` extended by bytes [offset, offset + n) of the file open as `fd`, read with pread into a
// small per-thread buffer (never through a mapping, so no page joins the resident set).
uint32_t pread_crc32(int fd, const std::string& path, uint64_t offset, size_t n, uint32_t crc) {
  static thread_local std::unique_ptr<unsigned char[]> buf;
  if (!buf) buf = std::make_unique<unsigned char[]>(kCopyChunk);
  for (size_t done = 0; done < n;) {
    const size_t want = std::min(n - done, kCopyChunk);
    const ssize_t r = ::pread(fd, buf.get(), want, off_t(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) throw_input("{}: read failed: {}", path, r < 0 ? std::strerror(errno) : "file shrank");
    crc = crc32_update(crc, buf.get(), size_t(r));
    done += size_t(r);
  }
  return crc;
}

void put16(std::string& s, uint32_t v) { s += char(v & 0xff), s += char((v >> 8) & 0xff); }
void put32(std::string& s, uint32_t v) { put16(s, v & 0xffff), put16(s, v >> 16); }

void put64(std::string& s, uint64_t v) { put32(s, uint32_t(v & 0xffffffffu)), put32(s, uint32_t(v >> 32)); }

// Stored-entry zip writer. Sizes or offsets past 4 GiB use zip64 records, as torch.save does
// (MOE_FORCE_ZIP64=1 forces them, so tests can cover that path with small files).
class ZipWriter {
 public:
  explicit ZipWriter(const std::string& path) : path_(path), tmp_(path + ".tmp") {
    const char* force = std::getenv("MOE_FORCE_ZIP64");
    force64_ = force && std::string(force) == "1";
    owned_ = std::make_unique<OutputFile>(tmp_);
    f_ = owned_.get();
  }
  // An archive written into `out` from byte `base` on (offsets inside it count from `base`, as
  // torch.save into a stream does); the caller owns and closes the file.
  ZipWriter(OutputFile& out, uint64_t base) : f_(&out), base_(base) {
    const char* force = std::getenv("MOE_FORCE_ZIP64");
    force64_ = force && std::string(force) == "1";
  }
  ~ZipWriter() {
    if (owned_) owned_.reset(), std::remove(tmp_.c_str());
  }
  size_t size() const { return off_; }
  // An entry of `size` bytes produced piecewise by `fill` through `sink` (memory or file runs),
  // checksummed as it goes; the header goes in front afterwards.
  void add_streamed(const std::string& name, size_t size, const std::function<void(TorchFileWriter::Sink&)>& fill) {
    const size_t data_at = off_ + local_header(name, 0, size, off_).size();
    struct Impl : TorchFileWriter::Sink {
      ZipWriter* z;
      size_t at, end;
      uint32_t crc = 0;
      void write(const void* p, size_t n) override {
        MOE_ASSERT(at + n <= end, "streamed storage overruns its size");
        z->f_->write_at(z->base_ + at, p, n);
        crc = crc32_update(crc, static_cast<const unsigned char*>(p), n);
        at += n;
      }
      void copy(const std::vector<TorchFileWriter::FileBytes>& runs) override {
        size_t n = 0;
        for (const auto& r : runs) n += r.size;
        MOE_ASSERT(at + n <= end, "streamed storage overruns its size");
        crc = z->copy_runs(at, runs, crc);
        at += n;
      }
    } sink;
    sink.z = this, sink.at = data_at, sink.end = data_at + size;
    fill(sink);
    MOE_ASSERT(sink.at == sink.end, "streamed storage {} wrote {} of {} bytes", name, sink.at - data_at, size);
    header(name, sink.crc, size);
    MOE_ASSERT(off_ == data_at, "zip header of {} ends at {}, planned {}", name, off_, data_at);
    off_ += size;
  }
  // A stored (uncompressed) entry whose data starts at a multiple of 64 bytes, padded with an
  // extra field as torch.save does, so that readers can map storages in place.
  void add(const std::string& name, const void* data, size_t size) {
    const auto* p = static_cast<const unsigned char*>(data);
    header(name, parallel_crc32(size, [&](size_t at, size_t n, uint32_t crc) { return crc32_update(crc, p + at, n); }),
           size);
    write(data, size);
  }
  // The same for bytes that lie in files, the entry's data being `runs` one after another:
  // copied to the data's place by the kernel and checksummed with pread (never through the
  // mapping, so no page of a source joins this process's resident set); the header, whose
  // length does not depend on the checksum, goes in front afterwards.
  void add_from(const std::string& name, const std::vector<TorchFileWriter::FileBytes>& runs) {
    size_t size = 0;
    for (const auto& r : runs) size += r.size;
    const size_t data_at = off_ + local_header(name, 0, size, off_).size();
    const uint32_t crc = copy_runs(data_at, runs, 0);
    header(name, crc, size);
    MOE_ASSERT(off_ == data_at, "zip header of {} ends at {}, planned {}", name, off_, data_at);
    off_ += size;
  }
  // Copies `runs` one after another to archive offset `data_at` and returns `crc` extended by
  // their bytes: the kernel copies file to file (copy_file_range, as cp does) while this thread
  // reads them once more with pread to checksum them (never through the mapping, so no page of
  // a source joins this process's resident set, nor the output's page cache).
  uint32_t copy_runs(size_t data_at, const std::vector<TorchFileWriter::FileBytes>& runs, uint32_t crc0) {
    size_t size = 0;
    std::vector<int> fds;
    struct Closer {
      std::vector<int>& fds;
      ~Closer() {
        for (int fd : fds) ::close(fd);
      }
    } closer{fds};
    std::vector<int> fd_of;  // run -> its file's descriptor (one per file)
    std::vector<const MappedFile*> opened;
    for (const auto& r : runs) {
      MOE_ASSERT(r.offset + r.size <= r.file->size(), "storage bytes past the end of {}", r.file->path());
      const size_t k = size_t(std::find(opened.begin(), opened.end(), r.file) - opened.begin());
      if (k == opened.size()) {
        const int fd = ::open(r.file->path().c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) throw_input("{}: cannot open: {}", r.file->path(), std::strerror(errno));
        fds.push_back(fd), opened.push_back(r.file);
      }
      fd_of.push_back(fds[k]);
      posix_fadvise(fds[k], off_t(r.offset), off_t(r.size), POSIX_FADV_SEQUENTIAL);
      size += r.size;
    }
    auto copy = [&] {
      size_t at = base_ + data_at;
      for (const auto& r : runs) f_->copy_at(at, *r.file, r.offset, r.size), at += r.size;
    };
    auto checksum = [&] {
      uint32_t c = crc0;
      for (size_t k = 0; k < runs.size(); ++k)
        c = pread_crc32(fd_of[k], runs[k].file->path(), runs[k].offset, runs[k].size, c);
      return c;
    };
    uint32_t crc = 0;
    if (size < (size_t(1) << 20) || std::thread::hardware_concurrency() < 2) {
      copy();
      crc = checksum();
    } else {
      std::exception_ptr error;
      std::thread copier([&] {
        try {
          copy();
        } catch (...) {
          error = std::current_exception();
        }
      });
      try {
        crc = checksum();
      } catch (...) {
        copier.join();
        throw;
      }
      copier.join();
      if (error) std::rethrow_exception(error);
    }
    return crc;
  }
  // The local header of an entry of `size` bytes whose data follows at once, written at `at`.
  std::string local_header(const std::string& name, uint32_t crc, size_t size, size_t at) const {
    const bool big = force64_ || size >= 0xffffffffull;
    std::string extra;
    if (big) put16(extra, 0x0001), put16(extra, 16), put64(extra, size), put64(extra, size);
    const size_t after = at + 30 + name.size() + extra.size() + 4;
    const size_t pad = (64 - after % 64) % 64;
    put16(extra, 0x4246), put16(extra, uint32_t(pad));  // "FB" padding field
    extra.append(pad, 'Z');
    std::string h;
    put32(h, 0x04034b50), put16(h, big ? 45 : 20), put16(h, 0), put16(h, 0), put16(h, 0), put16(h, 0);
    put32(h, crc), put32(h, big ? 0xffffffffu : uint32_t(size)), put32(h, big ? 0xffffffffu : uint32_t(size));
    put16(h, uint32_t(name.size())), put16(h, uint32_t(extra.size()));
    h += name;
    h += extra;
    return h;
  }
  // Writes that header at the current offset.
  void header(const std::string& name, uint32_t crc, size_t size) {
    const std::string h = local_header(name, crc, size, off_);
    central_.push_back({name, crc, size, off_});
    write(h.data(), h.size());
  }
  void finish() {
    const size_t cd_off = off_;
    std::string cd;
    for (const auto& e : central_) {
      const bool big_size = force64_ || e.size >= 0xffffffffull, big_off = force64_ || e.offset >= 0xffffffffull;
      std::string extra;
      if (big_size || big_off) {
        put16(extra, 0x0001), put16(extra, uint32_t((big_size ? 16 : 0) + (big_off ? 8 : 0)));
        if (big_size) put64(extra, e.size), put64(extra, e.size);
        if (big_off) put64(extra, e.offset);
      }
      put32(cd, 0x02014b50), put16(cd, 45), put16(cd, extra.empty() ? 20 : 45), put16(cd, 0), put16(cd, 0);
      put16(cd, 0), put16(cd, 0), put32(cd, e.crc);
      put32(cd, big_size ? 0xffffffffu : uint32_t(e.size)), put32(cd, big_size ? 0xffffffffu : uint32_t(e.size));
      put16(cd, uint32_t(e.name.size())), put16(cd, uint32_t(extra.size())), put16(cd, 0), put16(cd, 0), put16(cd, 0);
      put32(cd, 0), put32(cd, big_off ? 0xffffffffu : uint32_t(e.offset));
      cd += e.name;
      cd += extra;
    }
    const bool big = force64_ || cd_off + cd.size() >= 0xffffffffull || central_.size() >= 0xffff;
    std::string tail;
    if (big) {
      const size_t z64 = cd_off + cd.size();
      put32(tail, 0x06064b50), put64(tail, 44), put16(tail, 45), put16(tail, 45), put32(tail, 0), put32(tail, 0);
      put64(tail, central_.size()), put64(tail, central_.size()), put64(tail, cd.size()), put64(tail, cd_off);
      put32(tail, 0x07064b50), put32(tail, 0), put64(tail, z64), put32(tail, 1);
    }
    put32(tail, 0x06054b50), put16(tail, 0), put16(tail, 0);
    const uint32_t n16 = big ? 0xffffu : uint32_t(central_.size());
    put16(tail, n16), put16(tail, n16);
    put32(tail, big ? 0xffffffffu : uint32_t(cd.size())), put32(tail, big ? 0xffffffffu : uint32_t(cd_off));
    put16(tail, 0);
    write(cd.data(), cd.size());
    write(tail.data(), tail.size());
    if (!owned_) return;  // inside a caller's file
    owned_->close();
    owned_.reset();
    std::filesystem::rename(tmp_, path_);
  }

 private:
  struct Entry {
    std::string name;
    uint32_t crc;
    size_t size, offset;
  };
  void write(const void* p, size_t n) {
    f_->write_at(base_ + off_, p, n);
    off_ += n;
  }
  std::string path_, tmp_;
  std::unique_ptr<OutputFile> owned_;
  OutputFile* f_ = nullptr;
  uint64_t base_ = 0;
  size_t off_ = 0;
  bool force64_ = false;
  std::vector<Entry> central_;
};

[[noreturn]] void checksum_mismatch(const std::string& path, const std::string& entry) {
  throw_input("{}: entry '{}': checksum mismatch (file corrupted)", path, entry);
}

uint32_t get16(const unsigned char* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8; }
uint32_t get32(const unsigned char* p) { return get16(p) | get16(p + 2) << 16; }
uint64_t get64(const unsigned char* p) { return uint64_t(get32(p)) | uint64_t(get32(p + 4)) << 32; }

// A file opened for pread, closed when it goes out of scope; InputError naming the path.
struct ReadFd {
  int fd;
  explicit ReadFd(const std::string& path) : fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd < 0) throw_input("{}: cannot open: {}", path, std::strerror(errno));
  }
  ~ReadFd() { ::close(fd); }
  ReadFd(const ReadFd&) = delete;
  ReadFd& operator=(const ReadFd&) = delete;
};

}  // namespace

struct TorchFileWriter::Impl {
  explicit Impl(const std::string& path) : zip(path) {}
  Impl(OutputFile& out, uint64_t base) : zip(out, base) {}
  ZipWriter zip;
};

TorchFileWriter::TorchFileWriter(const std::string& path, const PyValue& root) : impl_(std::make_unique<Impl>(path)) {
  const std::string pkl = pickle_dumps(root);
  impl_->zip.add("archive/data.pkl", pkl.data(), pkl.size());
  impl_->zip.add("archive/byteorder", "little", 6);
}

TorchFileWriter::TorchFileWriter(OutputFile& out, uint64_t base, const PyValue& root)
    : impl_(std::make_unique<Impl>(out, base)) {
  const std::string pkl = pickle_dumps(root);
  impl_->zip.add("archive/data.pkl", pkl.data(), pkl.size());
  impl_->zip.add("archive/byteorder", "little", 6);
}

void TorchFileWriter::add_storage_streamed(const std::string& key, size_t size,
                                           const std::function<void(Sink&)>& fill) {
  impl_->zip.add_streamed("archive/data/" + key, size, fill);
}

TorchFileWriter::~TorchFileWriter() = default;

void TorchFileWriter::add_storage(const std::string& key, const Tensor& t) {
  impl_->zip.add("archive/data/" + key, t.raw(), t.nbytes());
}

void TorchFileWriter::add_storage_from(const std::string& key, const MappedFile& src, uint64_t offset, size_t n) {
  impl_->zip.add_from("archive/data/" + key, {FileBytes{&src, offset, n}});
}

void TorchFileWriter::add_storage_from(const std::string& key, const std::vector<FileBytes>& runs) {
  impl_->zip.add_from("archive/data/" + key, runs);
}

uint64_t TorchFileWriter::finish() {
  impl_->zip.add("archive/version", "3\n", 2);
  impl_->zip.finish();
  return impl_->zip.size();
}

void write_torch_file(const std::string& path, const PyValue& root,
                      const std::vector<std::pair<std::string, Tensor>>& storages) {
  TorchFileWriter w(path, root);
  for (const auto& [key, t] : storages) w.add_storage(key, t);
  w.finish();
}

// The zip directory, the local headers and data.pkl are read with pread, never through the
// mapping: a page the process touches in a mapped file joins its resident set together with
// the rest of its page-cache folio (up to megabytes on a warm cache), and touching one local
// header per storage would thus map most of a large checkpoint. Only tensor() reads the mapping.
TorchFile TorchFile::open(const std::string& path, const std::vector<std::string>& classes) {
  auto file = MappedFile::open(path);
  const size_t n = file->size();
  return open_range(std::move(file), 0, n, path, classes);
}

TorchFile TorchFile::open_range(std::shared_ptr<MappedFile> file, uint64_t base, uint64_t length,
                                const std::string& where, const std::vector<std::string>& classes) {
  TorchFile t;
  t.file_ = std::move(file);
  const std::string& path = t.file_->path();
  MOE_ASSERT(base + length <= t.file_->size(), "{}: archive range past the end of the file", where);
  const size_t n = size_t(length);
  auto bad = [&](const char* what) { throw_input("{}: not a readable torch archive: {}", where, what); };
  const ReadFd file_fd(path);
  const int fd = file_fd.fd;
  // Bytes [off, off + len) of the archive (callers check the range lies inside it).
  auto read_at = [&](uint64_t off, uint64_t len) {
    std::string buf(size_t(len), '\0');
    for (size_t done = 0; done < len;) {
      const ssize_t r = ::pread(fd, buf.data() + done, size_t(len) - done, off_t(base + off + done));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) throw_input("{}: read failed: {}", path, std::strerror(errno));
      if (r == 0) bad("file shrank while being read");
      done += size_t(r);
    }
    return buf;
  };
  auto u = [](const std::string& s) { return reinterpret_cast<const unsigned char*>(s.data()); };
  if (n < 22) bad("too short for a zip archive");
  // The end record lies in the last 22 + 65535 bytes (its comment), the zip64 locator 20 before.
  const size_t tail_at = n - std::min<size_t>(n, 22 + 65535 + 20);
  const std::string tail = read_at(tail_at, n - tail_at);
  const unsigned char* d = u(tail) - tail_at;  // d + x is file offset x, for x >= tail_at
  size_t eocd = n - 22;
  while (get32(d + eocd) != 0x06054b50) {
    if (eocd == tail_at || n - eocd > 22 + 65535) bad("no end-of-central-directory record (truncated file?)");
    --eocd;
  }
  uint64_t count = get16(d + eocd + 10), cd_size = get32(d + eocd + 12), cd_off = get32(d + eocd + 16);
  if (cd_off == 0xffffffffu || count == 0xffff || cd_size == 0xffffffffu) {  // zip64: follow the locator
    if (eocd < tail_at + 20 || get32(d + eocd - 20) != 0x07064b50) bad("zip64 locator missing");
    const uint64_t z = get64(d + eocd - 20 + 8);
    if (z + 56 > eocd) bad("corrupt zip64 end-of-central-directory record");
    const std::string rec = read_at(z, 56);
    if (get32(u(rec)) != 0x06064b50) bad("corrupt zip64 end-of-central-directory record");
    count = get64(u(rec) + 32), cd_size = get64(u(rec) + 40), cd_off = get64(u(rec) + 48);
  }
  if (cd_size > eocd || cd_off > eocd - cd_size) bad("central directory outside the file");
  const std::string cd = read_at(cd_off, cd_size);
  const unsigned char* c = u(cd);
  size_t p = 0;
  for (uint64_t i = 0; i < count; ++i) {
    if (p + 46 > cd_size || get32(c + p) != 0x02014b50) bad("corrupt central directory");
    const uint32_t method = get16(c + p + 10);
    const uint32_t crc = get32(c + p + 16);
    uint64_t csize = get32(c + p + 20), size = get32(c + p + 24);
    const uint32_t name_len = get16(c + p + 28), extra_len = get16(c + p + 30), comment_len = get16(c + p + 32);
    uint64_t local = get32(c + p + 42);
    if (p + 46 + name_len + extra_len > cd_size) bad("corrupt central directory");
    std::string name(reinterpret_cast<const char*>(c + p + 46), name_len);
    // zip64 extra field: the 0xffffffff fields, in order, as 64-bit values
    for (size_t x = p + 46 + name_len; x + 4 <= p + 46 + name_len + extra_len;) {
      const uint32_t id = get16(c + x), len = get16(c + x + 2);
      if (x + 4 + len > p + 46 + name_len + extra_len) bad("corrupt extra field");
      if (id == 0x0001) {
        size_t q = x + 4;
        auto next = [&](uint64_t* v) {
          if (*v != 0xffffffffu) return;
          if (q + 8 > x + 4 + len) bad("short zip64 extra field");
          *v = get64(c + q), q += 8;
        };
        next(&size), next(&csize), next(&local);
      }
      x += 4 + len;
    }
    if (method != 0 || csize != size)
      throw_input("{}: entry '{}' is compressed; torch checkpoints store entries uncompressed", path, name);
    if (local + 30 > n || local + 30 < local) bad("corrupt local header");
    const std::string lh = read_at(local, 30);
    if (get32(u(lh)) != 0x04034b50) bad("corrupt local header");
    const uint64_t data = local + 30 + get16(u(lh) + 26) + get16(u(lh) + 28);
    if (data + size > n || data + size < data) bad("entry data runs past the end of the file");
    t.entries_.push_back({name, size_t(base + data), size_t(size), crc});
    p += 46 + name_len + extra_len + comment_len;
  }
  t.verified_ = std::shared_ptr<std::atomic<bool>[]>(new std::atomic<bool>[t.entries_.size()]());
  for (size_t i = 0; i < t.entries_.size(); ++i) {
    const Entry& e = t.entries_[i];
    if (e.name.size() >= 8 && e.name.compare(e.name.size() - 8, 8, "data.pkl") == 0) {
      t.prefix_ = e.name.substr(0, e.name.size() - 8);
      const std::string pkl = read_at(e.offset - base, e.size);
      // checked before unpickling, so a flipped bit is named as such, not as a strange pickle
      if (crc32_update(0, pkl.data(), pkl.size()) != e.crc) checksum_mismatch(where, e.name);
      t.verified_[i] = true;
      t.root_ = pickle_loads(pkl, where + ": " + e.name, classes);
    }
  }
  if (!t.root_) bad("no data.pkl inside");
  return t;
}

const TorchFile::Entry* TorchFile::entry(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return &e;
  return nullptr;
}

const TorchFile::Entry& TorchFile::storage_entry(const TensorRef& r) const {
  const auto* e = entry(prefix_ + "data/" + r.storage_key);
  if (!e) throw_input("{}: storage '{}' named by data.pkl is missing", file_->path(), r.storage_key);
  return *e;
}

void TorchFile::verify(const TensorRef& r) const {
  const Entry& e = storage_entry(r);
  std::atomic<bool>& done = verified_[size_t(&e - entries_.data())];
  if (done.load(std::memory_order_acquire)) return;
  // Two threads asking for the same storage at once both compute it: harmless, and rare.
  const std::string& path = file_->path();
  const ReadFd file_fd(path);
  const int fd = file_fd.fd;
  posix_fadvise(fd, off_t(e.offset), off_t(e.size), POSIX_FADV_SEQUENTIAL);
  const uint32_t crc = parallel_crc32(
      e.size, [&](size_t at, size_t n, uint32_t c) { return pread_crc32(fd, path, e.offset + at, n, c); });
  if (crc != e.crc) checksum_mismatch(path, e.name);
  done.store(true, std::memory_order_release);
}

Tensor TorchFile::tensor(const TensorRef& r) const {
  const size_t at = locate(r).first;
  verify(r);
  const unsigned char* p = file_->data() + at;
  return Tensor::borrow(r.shape, r.dtype, p, std::shared_ptr<const void>(file_, p));
}

std::pair<size_t, size_t> TorchFile::locate(const TensorRef& r) const {
  if (!r.unsupported_storage.empty())
    throw_input("{}: tensor on storage '{}' is a {}; moectl computes in F32, BF16 and F16 only", file_->path(),
                r.storage_key, r.unsupported_storage);
  const Entry* e = &storage_entry(r);
  const size_t es = dtype_size(r.dtype);
  if (e->size != size_t(r.storage_numel) * es)
    throw_input("{}: storage '{}' holds {} bytes, data.pkl says {} elements", file_->path(), r.storage_key, e->size,
                r.storage_numel);
  int64_t expect = 1;
  for (size_t i = r.shape.size(); i-- > 0;) {
    if (r.shape[i] != 1 && r.stride.at(i) != expect)
      throw_input("{}: tensor on storage '{}' is not contiguous; moectl reads contiguous tensors only", file_->path(),
                  r.storage_key);
    expect *= r.shape[i];
  }
  if (r.offset < 0 || r.offset + shape_numel(r.shape) > r.storage_numel)
    throw_input("{}: tensor view runs past storage '{}'", file_->path(), r.storage_key);
  return {e->offset + size_t(r.offset) * es, size_t(shape_numel(r.shape)) * es};
}

}  // namespace moe::io
