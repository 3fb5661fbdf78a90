// safetensors writers: one file (streamed, renamed into place) and HF-style shards + index.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "core/error.h"
#include "io/safetensors.h"

namespace moe::io {

namespace fs = std::filesystem;

namespace {

void check_name(const std::string& where, const std::string& name) {
  if (name.empty()) throw_input("{}: a tensor with an empty name cannot be written", where);
  if (name == "__metadata__")
    throw_input("{}: '__metadata__' is reserved by the safetensors format and cannot name a tensor", where);
}

// JSON string literal for `s`; InputError if `s` is not UTF-8 (JSON cannot hold it).
std::string json_string(const std::string& where, const std::string& s) {
  try {
    return nlohmann::json(s).dump();
  } catch (const nlohmann::json::exception&) {
    throw_input("{}: name or metadata '{}' is not valid UTF-8 and cannot be stored in a safetensors header", where, s);
  }
}

// The compact JSON header, as the reference writer emits it: __metadata__ first, then the
// tensors in order with consecutive data offsets; padded with spaces to a multiple of 8.
std::string build_header(const std::string& path, const std::vector<TensorDesc>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  std::string h = "{";
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) h += ',';
      first = false;
      h += json_string(path, k) + ":" + json_string(path, v);
    }
    h += "}";
  }
  std::set<std::string> seen;
  uint64_t off = 0;
  for (const auto& t : tensors) {
    check_name(path, t.name);
    if (!seen.insert(t.name).second)
      throw_input("{}: tensor '{}' is given twice; tensor names must be unique", path, t.name);
    if (h.size() > 1) h += ',';
    h += json_string(path, t.name);
    h += ":{\"dtype\":\"";
    h += dtype_name(t.dtype);
    h += "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) h += (i ? "," : "") + std::to_string(t.shape[i]);
    h += "],\"data_offsets\":[" + std::to_string(off) + "," + std::to_string(off + t.nbytes()) + "]}";
    off += t.nbytes();
  }
  h += "}";
  h.append((8 - h.size() % 8) % 8, ' ');
  return h;
}

std::string build_header(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  std::vector<TensorDesc> d;
  d.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    check_name(path, name);
    MOE_ASSERT(t.defined(), "tensor '{}' for {} has no data", name, path);
    d.push_back({name, t.dtype(), t.shape()});
  }
  return build_header(path, d, metadata);
}

}  // namespace

std::string safetensors_header_bytes(const std::string& path, const std::vector<TensorDesc>& tensors,
                                     const std::map<std::string, std::string>& metadata) {
  const std::string header = build_header(path, tensors, metadata);
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((uint64_t(header.size()) >> (8 * i)) & 0xff);
  return out + header;
}

SafetensorsShardPlan plan_safetensors_shards(const std::vector<uint64_t>& nbytes, uint64_t max_shard_bytes) {
  SafetensorsShardPlan p;
  uint64_t shard = 0;
  for (size_t i = 0; i < nbytes.size(); ++i) {
    if (p.members.empty() || (!p.members.back().empty() && shard + nbytes[i] > max_shard_bytes))
      p.members.emplace_back(), shard = 0;
    p.members.back().push_back(i);
    shard += nbytes[i], p.total_bytes += nbytes[i];
  }
  if (p.members.empty()) p.members.emplace_back();
  const size_t m = p.members.size();
  for (size_t i = 0; i < m; ++i) {
    char fname[64];
    std::snprintf(fname, sizeof fname, "model-%05zu-of-%05zu.safetensors", i + 1, m);
    p.files.push_back(m == 1 ? "model.safetensors" : fname);
  }
  return p;
}

std::string safetensors_index_json(const std::vector<std::pair<std::string, std::vector<std::string>>>& shards,
                                   uint64_t total_bytes) {
  nlohmann::json weight_map = nlohmann::json::object();  // sorted by name, as HF writes it
  for (const auto& [file, names] : shards)
    for (const auto& n : names) weight_map[n] = file;
  nlohmann::json idx = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", std::move(weight_map)}};
  return idx.dump(2) + "\n";
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string header = build_header(path, tensors, metadata);
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f)
    throw_input("{}: cannot create: {} (check that the directory exists and is writable)", tmp, std::strerror(errno));
  int err = 0;
  auto put = [&](const void* p, size_t n) {
    if (err == 0 && n > 0 && std::fwrite(p, 1, n, f) != n) err = errno ? errno : EIO;
  };
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = (uint64_t(header.size()) >> (8 * i)) & 0xff;
  put(len, 8);
  put(header.data(), header.size());
  for (const auto& [name, t] : tensors) put(t.raw(), t.nbytes());
  if (std::fclose(f) != 0 && err == 0) err = errno ? errno : EIO;
  if (err != 0) {
    std::remove(tmp.c_str());
    throw_input("{}: write failed: {} (disk full?)", path, std::strerror(err));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    err = errno;
    std::remove(tmp.c_str());
    throw_input("{}: cannot rename {} into place: {}", path, tmp, std::strerror(err));
  }
}

ShardedSafetensorsWriter::ShardedSafetensorsWriter(std::string dir, uint64_t max_shard_bytes)
    : dir_(std::move(dir)), max_bytes_(max_shard_bytes) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec || !fs::is_directory(dir_))
    throw_input("{}: cannot create the output directory: {}", dir_, ec ? ec.message() : "a file of that name exists");
}

ShardedSafetensorsWriter::~ShardedSafetensorsWriter() {
  std::error_code ec;  // partial files that finish() renamed are gone already; the rest go now
  for (const auto& p : partial_files_) fs::remove(p, ec);
}

void ShardedSafetensorsWriter::add(const std::string& name, const Tensor& t) {
  MOE_ASSERT(!finished_, "add('{}') after finish() on the writer for {}", name, dir_);
  check_name(dir_, name);
  if (!added_.insert(name).second)
    throw_input("{}: tensor '{}' is added twice; tensor names must be unique", dir_, name);
  MOE_ASSERT(t.defined(), "tensor '{}' for {} has no data", name, dir_);
  if (!pending_.empty() && shard_bytes_ + t.nbytes() > max_bytes_) flush_shard();
  pending_.emplace_back(name, t);
  shard_bytes_ += t.nbytes();
  total_bytes_ += t.nbytes();
}

void ShardedSafetensorsWriter::flush_shard() {
  if (pending_.empty()) return;
  // M is known only at the end: write under a provisional hidden name, renamed in finish().
  const std::string partial =
      (fs::path(dir_) / (".shard-" + std::to_string(partial_files_.size() + 1) + ".partial")).string();
  partial_files_.push_back(partial);
  write_safetensors(partial, pending_);
  std::vector<std::string> names;
  names.reserve(pending_.size());
  for (const auto& p : pending_) names.push_back(p.first);
  shard_names_.push_back(std::move(names));
  pending_.clear();
  shard_bytes_ = 0;
}

void ShardedSafetensorsWriter::finish() {
  MOE_ASSERT(!finished_, "finish() called twice on the writer for {}", dir_);
  finished_ = true;
  flush_shard();
  const fs::path dir(dir_);
  auto rename = [&](const std::string& from, const std::string& to) {
    std::error_code ec;
    fs::rename(from, dir / to, ec);
    if (ec) throw_input("{}: cannot rename {} to {}: {}", dir_, from, to, ec.message());
  };
  const size_t m = partial_files_.size();
  if (m == 0) {
    write_safetensors((dir / "model.safetensors").string(), {});
    files_ = {"model.safetensors"};
  } else if (m == 1) {
    rename(partial_files_[0], "model.safetensors");
    files_ = {"model.safetensors"};
  } else {
    std::vector<std::pair<std::string, std::vector<std::string>>> shards;
    for (size_t i = 0; i < m; ++i) {
      char fname[64];
      std::snprintf(fname, sizeof fname, "model-%05zu-of-%05zu.safetensors", i + 1, m);
      rename(partial_files_[i], fname);
      files_.push_back(fname);
      shards.push_back({fname, shard_names_[i]});
    }
    write_file_atomic((dir / "model.safetensors.index.json").string(), safetensors_index_json(shards, total_bytes_));
    files_.push_back("model.safetensors.index.json");
  }
  // Weights files of an earlier save into the same directory would contradict this one.
  static const std::regex shard_re("model-[0-9]{5}-of-[0-9]{5}\\.safetensors");
  const std::set<std::string> keep(files_.begin(), files_.end());
  std::error_code ec;
  std::vector<fs::path> stale;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string f = e.path().filename().string();
    if (keep.count(f)) continue;
    if (f == "model.safetensors" || f == "model.safetensors.index.json" || std::regex_match(f, shard_re))
      stale.push_back(e.path());
  }
  for (const auto& p : stale) fs::remove(p, ec);
}

}  // namespace moe::io
