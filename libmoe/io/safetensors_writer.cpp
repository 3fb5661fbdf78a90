#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"

namespace moe::io {

namespace fs = std::filesystem;

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json h;
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t off = 0;
  for (const auto& [name, t] : tensors) {
    h[name] = {{"dtype", std::string(dtype_name(t.dtype()))}, {"shape", t.shape()}, {"data_offsets", {off, off + t.nbytes()}}};
    off += t.nbytes();
  }
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');  // data starts 8-byte aligned, as HF writes it
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw_input("{}: cannot create: {}", tmp, std::strerror(errno));
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = (uint64_t(header.size()) >> (8 * i)) & 0xff;
  bool ok = std::fwrite(len, 1, 8, f) == 8 && std::fwrite(header.data(), 1, header.size(), f) == header.size();
  for (const auto& [name, t] : tensors)
    ok = ok && std::fwrite(t.raw(), 1, t.nbytes(), f) == t.nbytes();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    throw_input("{}: write failed (disk full?): {}", path, std::strerror(errno));
  }
  fs::rename(tmp, path);
}

ShardedSafetensorsWriter::ShardedSafetensorsWriter(std::string dir, uint64_t max_shard_bytes)
    : dir_(std::move(dir)), max_bytes_(max_shard_bytes) {}

void ShardedSafetensorsWriter::add(const std::string& name, const Tensor& t) {
  if (!pending_.empty() && shard_bytes_ + t.nbytes() > max_bytes_) flush_shard();
  pending_.push_back({name, t});
  shard_bytes_ += t.nbytes();
  total_bytes_ += t.nbytes();
}

void ShardedSafetensorsWriter::flush_shard() {
  if (pending_.empty()) return;
  // Shard count is known only at the end: write under a provisional name, rename in finish().
  const std::string tmp = (fs::path(dir_) / ("shard-" + std::to_string(shard_names_.size()) + ".partial")).string();
  write_safetensors(tmp, pending_);
  std::vector<std::string> names;
  for (const auto& p : pending_) names.push_back(p.first);
  shard_names_.push_back(std::move(names));
  shard_tmp_files_.push_back(tmp);
  pending_.clear();
  shard_bytes_ = 0;
}

void ShardedSafetensorsWriter::finish() {
  flush_shard();
  const size_t m = shard_tmp_files_.size();
  if (m == 1) {
    fs::rename(shard_tmp_files_[0], fs::path(dir_) / "model.safetensors");
    return;
  }
  nlohmann::ordered_json idx;
  idx["metadata"] = {{"total_size", total_bytes_}};
  idx["weight_map"] = nlohmann::ordered_json::object();
  for (size_t i = 0; i < m; ++i) {
    char fname[64];
    std::snprintf(fname, sizeof fname, "model-%05zu-of-%05zu.safetensors", i + 1, m);
    fs::rename(shard_tmp_files_[i], fs::path(dir_) / fname);
    for (const auto& n : shard_names_[i]) idx["weight_map"][n] = fname;
  }
  write_file_atomic((fs::path(dir_) / "model.safetensors.index.json").string(), idx.dump(2) + "\n");
}

}  // namespace moe::io
