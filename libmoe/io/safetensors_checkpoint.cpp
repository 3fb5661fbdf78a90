// SafetensorsCheckpoint: the weights of a model directory, single file or sharded.
#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "io/safetensors.h"

namespace moe::io {

namespace fs = std::filesystem;

namespace {

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// A shard named by the index must be a plain file name in the index's directory.
bool plain_file_name(const std::string& f) {
  return !f.empty() && f != "." && f != ".." && f.find('/') == std::string::npos && f.find('\\') == std::string::npos &&
         f.find('\0') == std::string::npos;
}

}  // namespace

SafetensorsCheckpoint SafetensorsCheckpoint::open_dir(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw_input(
        "{}: not a directory (expected a Hugging Face model directory with model.safetensors or "
        "model.safetensors.index.json)",
        dir);
  SafetensorsCheckpoint c;
  c.dir_ = dir;
  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";

  auto add_whole_file = [&c](const std::string& path) {
    auto f = SafetensorsFile::open(path);
    for (const auto& t : f->header().tensors) c.where_[t.name] = f;
  };

  if (is_file(single)) {
    if (is_file(index))
      log().debug("{}: using model.safetensors; model.safetensors.index.json beside it is ignored", dir);
    add_whole_file(single.string());
  } else if (is_file(index)) {
    const std::string ip = index.string();
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_text_file(ip));
    } catch (const nlohmann::json::exception& e) {
      throw_input("{}: not valid JSON ({}); the index is corrupt, download it again", ip, e.what());
    }
    if (!j.is_object()) throw_input("{}: is a JSON {}, but a safetensors index must be an object", ip, j.type_name());
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object())
      throw_input("{}: has no 'weight_map' object (tensor name -> shard file); not a safetensors index", ip);
    if (wm->empty()) throw_input("{}: 'weight_map' is empty, so the checkpoint has no tensors", ip);
    std::map<std::string, std::shared_ptr<SafetensorsFile>> shards;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      const std::string& name = it.key();
      if (!it.value().is_string())
        throw_input("{}: weight_map['{}'] is a JSON {}, but must be a shard file name", ip, name,
                    it.value().type_name());
      const std::string fname = it.value().get<std::string>();
      if (!plain_file_name(fname))
        throw_input("{}: weight_map['{}'] = '{}' must name a file in the index's own directory", ip, name, fname);
      auto& shard = shards[fname];
      if (!shard) {
        const fs::path p = fs::path(dir) / fname;
        if (!is_file(p))
          throw_input(
              "{}: weight_map puts tensor '{}' in '{}', which does not exist in {} (the download is incomplete)", ip,
              name, fname, dir);
        shard = SafetensorsFile::open(p.string());
      }
      if (!shard->has(name))
        throw_input(
            "{}: index names tensor '{}' in file '{}' but {} does not contain it (the index and the shards come "
            "from different checkpoints)",
            ip, name, fname, fname);
      c.where_[name] = shard;
    }
    // A tensor in a shard but not in the weight_map is invisible to transformers: the index
    // and the shards disagree, so refuse rather than guess.
    for (const auto& [fname, shard] : shards)
      for (const auto& t : shard->header().tensors)
        if (!c.where_.count(t.name))
          throw_input(
              "{}: tensor '{}' in '{}' is missing from the index's weight_map (the index and the shards come "
              "from different checkpoints)",
              ip, t.name, fname);
  } else {
    std::vector<std::string> found;
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.path().extension() == ".safetensors" && is_file(e.path())) found.push_back(e.path().filename().string());
    std::sort(found.begin(), found.end());
    if (found.empty())
      throw_input(
          "{}: no model.safetensors, model.safetensors.index.json or other *.safetensors file (not a model "
          "directory, or the weights were not downloaded)",
          dir);
    if (found.size() > 1)
      throw_input(
          "{}: {} *.safetensors files ({}, ...) but no model.safetensors.index.json saying which tensor is in "
          "which (add the index, or keep one file)",
          dir, found.size(), found[0]);
    add_whole_file((fs::path(dir) / found[0]).string());
  }
  c.names_.reserve(c.where_.size());
  for (const auto& [name, f] : c.where_) c.names_.push_back(name);
  return c;
}

const SafetensorsFile& SafetensorsCheckpoint::file(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw_input("{}: no tensor named '{}' in the checkpoint", dir_, name);
  return *it->second;
}

const TensorInfo& SafetensorsCheckpoint::info(const std::string& name) const { return file(name).info(name); }
Tensor SafetensorsCheckpoint::get(const std::string& name) const { return file(name).get(name); }
const std::string& SafetensorsCheckpoint::file_of(const std::string& name) const { return file(name).path(); }

}  // namespace moe::io
