#include "io/torch_file.h"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace moe::io {

namespace {

uint32_t crc32(const void* data, size_t n) {  // zlib's, in chunks that fit its uInt length
  uLong crc = ::crc32(0L, Z_NULL, 0);
  auto* p = static_cast<const Bytef*>(data);
  for (size_t done = 0; done < n;) {
    const uInt chunk = uInt(std::min<size_t>(n - done, size_t(1) << 30));
    crc = ::crc32(crc, p + done, chunk);
    done += chunk;
  }
  return uint32_t(crc);
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
    f_ = std::make_unique<OutputFile>(tmp_);
  }
  ~ZipWriter() {
    if (f_) f_.reset(), std::remove(tmp_.c_str());
  }
  // A stored (uncompressed) entry whose data starts at a multiple of 64 bytes, padded with an
  // extra field as torch.save does, so that readers can map storages in place.
  void add(const std::string& name, const void* data, size_t size) {
    header(name, crc32(data, size), size);
    write(data, size);
  }
  // The same for bytes that lie in a mapped file: checksummed through the mapping (whose pages
  // are then dropped) and copied file to file by the kernel.
  void add_from(const std::string& name, const MappedFile& src, uint64_t offset, size_t size) {
    uLong crc = ::crc32(0L, Z_NULL, 0);
    for (size_t done = 0; done < size;) {  // a chunk at a time, so only a chunk is ever resident
      const size_t n = std::min<size_t>(size - done, size_t(32) << 20);
      crc = crc32_combine(crc, crc32(src.data() + offset + done, n), z_off_t(n));
      src.drop_pages(offset + done, n);
      done += n;
    }
    header(name, uint32_t(crc), size);
    f_->copy_at(off_, src, offset, size);
    off_ += size;
  }
  // The local header of an entry of `size` bytes whose data follows at once.
  void header(const std::string& name, uint32_t crc, size_t size) {
    const bool big = force64_ || size >= 0xffffffffull;
    std::string extra;
    if (big) put16(extra, 0x0001), put16(extra, 16), put64(extra, size), put64(extra, size);
    const size_t after = off_ + 30 + name.size() + extra.size() + 4;
    const size_t pad = (64 - after % 64) % 64;
    put16(extra, 0x4246), put16(extra, uint32_t(pad));  // "FB" padding field
    extra.append(pad, 'Z');
    std::string h;
    put32(h, 0x04034b50), put16(h, big ? 45 : 20), put16(h, 0), put16(h, 0), put16(h, 0), put16(h, 0);
    put32(h, crc), put32(h, big ? 0xffffffffu : uint32_t(size)), put32(h, big ? 0xffffffffu : uint32_t(size));
    put16(h, uint32_t(name.size())), put16(h, uint32_t(extra.size()));
    h += name;
    h += extra;
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
    f_->close();
    f_.reset();
    std::filesystem::rename(tmp_, path_);
  }

 private:
  struct Entry {
    std::string name;
    uint32_t crc;
    size_t size, offset;
  };
  void write(const void* p, size_t n) {
    f_->write_at(off_, p, n);
    off_ += n;
  }
  std::string path_, tmp_;
  std::unique_ptr<OutputFile> f_;
  size_t off_ = 0;
  bool force64_ = false;
  std::vector<Entry> central_;
};

uint32_t get16(const unsigned char* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8; }
uint32_t get32(const unsigned char* p) { return get16(p) | get16(p + 2) << 16; }
uint64_t get64(const unsigned char* p) { return uint64_t(get32(p)) | uint64_t(get32(p + 4)) << 32; }

}  // namespace

struct TorchFileWriter::Impl {
  explicit Impl(const std::string& path) : zip(path) {}
  ZipWriter zip;
};

TorchFileWriter::TorchFileWriter(const std::string& path, const PyValue& root) : impl_(std::make_unique<Impl>(path)) {
  const std::string pkl = pickle_dumps(root);
  impl_->zip.add("archive/data.pkl", pkl.data(), pkl.size());
  impl_->zip.add("archive/byteorder", "little", 6);
}

TorchFileWriter::~TorchFileWriter() = default;

void TorchFileWriter::add_storage(const std::string& key, const Tensor& t) {
  impl_->zip.add("archive/data/" + key, t.raw(), t.nbytes());
}

void TorchFileWriter::add_storage_from(const std::string& key, const MappedFile& src, uint64_t offset, size_t n) {
  impl_->zip.add_from("archive/data/" + key, src, offset, n);
}

void TorchFileWriter::finish() {
  impl_->zip.add("archive/version", "3\n", 2);
  impl_->zip.finish();
}

void write_torch_file(const std::string& path, const PyValue& root,
                      const std::vector<std::pair<std::string, Tensor>>& storages) {
  TorchFileWriter w(path, root);
  for (const auto& [key, t] : storages) w.add_storage(key, t);
  w.finish();
}

TorchFile TorchFile::open(const std::string& path) {
  TorchFile t;
  t.file_ = MappedFile::open(path);
  const unsigned char* d = t.file_->data();
  const size_t n = t.file_->size();
  auto bad = [&](const char* what) { throw_input("{}: not a readable torch checkpoint: {}", path, what); };
  if (n < 22) bad("too short for a zip archive");
  size_t eocd = n - 22;
  while (get32(d + eocd) != 0x06054b50) {
    if (eocd == 0 || n - eocd > 22 + 65535) bad("no end-of-central-directory record (truncated file?)");
    --eocd;
  }
  uint64_t count = get16(d + eocd + 10), cd_size = get32(d + eocd + 12), cd_off = get32(d + eocd + 16);
  if (cd_off == 0xffffffffu || count == 0xffff || cd_size == 0xffffffffu) {  // zip64: follow the locator
    if (eocd < 20 || get32(d + eocd - 20) != 0x07064b50) bad("zip64 locator missing");
    const uint64_t z = get64(d + eocd - 20 + 8);
    if (z + 56 > eocd || get32(d + z) != 0x06064b50) bad("corrupt zip64 end-of-central-directory record");
    count = get64(d + z + 32), cd_size = get64(d + z + 40), cd_off = get64(d + z + 48);
  }
  if (cd_off + cd_size > eocd || cd_off > eocd) bad("central directory outside the file");
  size_t p = size_t(cd_off);
  for (uint64_t i = 0; i < count; ++i) {
    if (p + 46 > cd_off + cd_size || get32(d + p) != 0x02014b50) bad("corrupt central directory");
    const uint32_t method = get16(d + p + 10);
    uint64_t csize = get32(d + p + 20), size = get32(d + p + 24);
    const uint32_t name_len = get16(d + p + 28), extra_len = get16(d + p + 30), comment_len = get16(d + p + 32);
    uint64_t local = get32(d + p + 42);
    if (p + 46 + name_len + extra_len > n) bad("corrupt central directory");
    std::string name(reinterpret_cast<const char*>(d + p + 46), name_len);
    // zip64 extra field: the 0xffffffff fields, in order, as 64-bit values
    for (size_t x = p + 46 + name_len; x + 4 <= p + 46 + name_len + extra_len;) {
      const uint32_t id = get16(d + x), len = get16(d + x + 2);
      if (x + 4 + len > p + 46 + name_len + extra_len) bad("corrupt extra field");
      if (id == 0x0001) {
        size_t q = x + 4;
        auto next = [&](uint64_t* v) {
          if (*v != 0xffffffffu) return;
          if (q + 8 > x + 4 + len) bad("short zip64 extra field");
          *v = get64(d + q), q += 8;
        };
        next(&size), next(&csize), next(&local);
      }
      x += 4 + len;
    }
    if (method != 0 || csize != size)
      throw_input("{}: entry '{}' is compressed; torch checkpoints store entries uncompressed", path, name);
    if (local + 30 > n || get32(d + local) != 0x04034b50) bad("corrupt local header");
    const uint64_t data = local + 30 + get16(d + local + 26) + get16(d + local + 28);
    if (data + size > n) bad("entry data runs past the end of the file");
    t.entries_.push_back({name, {size_t(data), size_t(size)}});
    p += 46 + name_len + extra_len + comment_len;
  }
  for (const auto& [name, loc] : t.entries_) {
    if (name.size() >= 8 && name.compare(name.size() - 8, 8, "data.pkl") == 0) {
      t.prefix_ = name.substr(0, name.size() - 8);
      t.root_ = pickle_loads(std::string_view(reinterpret_cast<const char*>(d + loc.first), loc.second),
                             path + ": " + name);
    }
  }
  if (!t.root_) bad("no data.pkl inside");
  return t;
}

const std::pair<size_t, size_t>* TorchFile::entry(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.first == name) return &e.second;
  return nullptr;
}

Tensor TorchFile::tensor(const TensorRef& r) const {
  const unsigned char* p = file_->data() + locate(r).first;
  return Tensor::borrow(r.shape, r.dtype, p, std::shared_ptr<const void>(file_, p));
}

std::pair<size_t, size_t> TorchFile::locate(const TensorRef& r) const {
  if (!r.unsupported_storage.empty())
    throw_input("{}: tensor on storage '{}' is a {}; moectl computes in F32, BF16 and F16 only", file_->path(),
                r.storage_key, r.unsupported_storage);
  const auto* e = entry(prefix_ + "data/" + r.storage_key);
  if (!e) throw_input("{}: storage '{}' named by data.pkl is missing", file_->path(), r.storage_key);
  const size_t es = dtype_size(r.dtype);
  if (e->second != size_t(r.storage_numel) * es)
    throw_input("{}: storage '{}' holds {} bytes, data.pkl says {} elements", file_->path(), r.storage_key, e->second,
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
  return {e->first + size_t(r.offset) * es, size_t(shape_numel(r.shape)) * es};
}

}  // namespace moe::io
