#include "io/torch_file.h"

#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace moe::io {

namespace {

uint32_t crc32(const void* data, size_t n, uint32_t crc = 0) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

void put16(std::string& s, uint32_t v) { s += char(v & 0xff), s += char((v >> 8) & 0xff); }
void put32(std::string& s, uint32_t v) { put16(s, v & 0xffff), put16(s, v >> 16); }

class ZipWriter {
 public:
  explicit ZipWriter(const std::string& path) : path_(path), tmp_(path + ".tmp") {
    f_ = std::fopen(tmp_.c_str(), "wb");
    if (!f_) throw_input("{}: cannot create", tmp_);
  }
  ~ZipWriter() {
    if (f_) std::fclose(f_), std::remove(tmp_.c_str());
  }
  // A stored (uncompressed) entry whose data starts at a multiple of 64 bytes, padded with an
  // extra field as torch.save does, so that readers can map storages in place.
  void add(const std::string& name, const void* data, size_t size) {
    if (off_ + size + name.size() + 200 > 0xffffffffull)
      throw_input("{}: a checkpoint file over 4 GiB needs zip64, which moectl does not write yet; use more "
                  "parallel ranks or a smaller model", path_);
    const uint32_t crc = crc32(data, size);
    const size_t after_name = off_ + 30 + name.size();
    const size_t pad = (64 - (after_name + 4) % 64) % 64;
    std::string h;
    put32(h, 0x04034b50), put16(h, 20), put16(h, 0), put16(h, 0), put16(h, 0), put16(h, 0);
    put32(h, crc), put32(h, uint32_t(size)), put32(h, uint32_t(size));
    put16(h, uint32_t(name.size())), put16(h, uint32_t(4 + pad));
    h += name;
    put16(h, 0x4246), put16(h, uint32_t(pad));  // "FB" padding field
    h.append(pad, 'Z');
    central_.push_back({name, crc, size, off_});
    write(h.data(), h.size());
    write(data, size);
  }
  void finish() {
    const size_t cd_off = off_;
    std::string cd;
    for (const auto& e : central_) {
      put32(cd, 0x02014b50), put16(cd, 20), put16(cd, 20), put16(cd, 0), put16(cd, 0), put16(cd, 0), put16(cd, 0);
      put32(cd, e.crc), put32(cd, uint32_t(e.size)), put32(cd, uint32_t(e.size));
      put16(cd, uint32_t(e.name.size())), put16(cd, 0), put16(cd, 0), put16(cd, 0), put16(cd, 0), put32(cd, 0);
      put32(cd, uint32_t(e.offset));
      cd += e.name;
    }
    std::string eocd;
    put32(eocd, 0x06054b50), put16(eocd, 0), put16(eocd, 0);
    put16(eocd, uint32_t(central_.size())), put16(eocd, uint32_t(central_.size()));
    put32(eocd, uint32_t(cd.size())), put32(eocd, uint32_t(cd_off)), put16(eocd, 0);
    write(cd.data(), cd.size());
    write(eocd.data(), eocd.size());
    const bool ok = std::fclose(f_) == 0;
    f_ = nullptr;
    if (!ok) throw_input("{}: write failed (disk full?)", tmp_);
    std::filesystem::rename(tmp_, path_);
  }

 private:
  struct Entry {
    std::string name;
    uint32_t crc;
    size_t size, offset;
  };
  void write(const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f_) != n) throw_input("{}: write failed (disk full?)", tmp_);
    off_ += n;
  }
  std::string path_, tmp_;
  std::FILE* f_ = nullptr;
  size_t off_ = 0;
  std::vector<Entry> central_;
};

uint32_t get16(const unsigned char* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8; }
uint32_t get32(const unsigned char* p) { return get16(p) | get16(p + 2) << 16; }

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
  const uint32_t count = get16(d + eocd + 10), cd_size = get32(d + eocd + 12), cd_off = get32(d + eocd + 16);
  if (cd_off == 0xffffffffu || count == 0xffff) bad("zip64 archives are not supported yet");
  if (size_t(cd_off) + cd_size > eocd) bad("central directory outside the file");
  size_t p = cd_off;
  for (uint32_t i = 0; i < count; ++i) {
    if (p + 46 > size_t(cd_off) + cd_size || get32(d + p) != 0x02014b50) bad("corrupt central directory");
    const uint32_t method = get16(d + p + 10), size = get32(d + p + 20), csize = get32(d + p + 24);
    const uint32_t name_len = get16(d + p + 28), extra_len = get16(d + p + 30), comment_len = get16(d + p + 32);
    const uint32_t local = get32(d + p + 42);
    if (p + 46 + name_len > n) bad("corrupt central directory");
    std::string name(reinterpret_cast<const char*>(d + p + 46), name_len);
    if (method != 0 || csize != size) throw_input("{}: entry '{}' is compressed; torch checkpoints store entries uncompressed", path, name);
    if (size_t(local) + 30 > n || get32(d + local) != 0x04034b50) bad("corrupt local header");
    const size_t data = size_t(local) + 30 + get16(d + local + 26) + get16(d + local + 28);
    if (data + size > n) bad("entry data runs past the end of the file");
    t.entries_.push_back({name, {data, size}});
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
  const unsigned char* p = file_->data() + e->first + size_t(r.offset) * es;
  return Tensor::borrow(r.shape, r.dtype, p, std::shared_ptr<const void>(file_, p));
}

}  // namespace moe::io
