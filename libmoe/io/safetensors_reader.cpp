#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"

namespace moe::io {

namespace fs = std::filesystem;

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  auto f = std::make_shared<SafetensorsFile>();
  f->file_ = MappedFile::open(path);
  f->header_ = parse_safetensors_header(f->file_->data(), f->file_->size(), path);
  for (size_t i = 0; i < f->header_.tensors.size(); ++i) f->index_[f->header_.tensors[i].name] = i;
  return f;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw_input("{}: no tensor named '{}'", path(), name);
  return header_.tensors[it->second];
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorInfo& t = info(name);
  DType dt;
  if (!parse_dtype(t.dtype, &dt))
    throw_input("{}: tensor '{}' has dtype {}, which moectl does not compute in (expected F32, BF16 or F16)", path(),
                name, t.dtype);
  // The tensor holds the mapping alive through an aliasing shared_ptr.
  std::shared_ptr<const void> keep(file_, file_->data() + t.begin);
  return Tensor::borrow(Shape(t.shape.begin(), t.shape.end()), dt, file_->data() + t.begin, keep);
}

SafetensorsCheckpoint SafetensorsCheckpoint::open_dir(const std::string& dir) {
  if (!fs::is_directory(dir)) throw_input("{}: not a directory (expected a Hugging Face model directory)", dir);
  SafetensorsCheckpoint c;
  c.dir_ = dir;
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single = fs::path(dir) / "model.safetensors";
  if (fs::exists(index)) {
    const std::string ip = index.string();
    auto j = nlohmann::json::parse(read_text_file(ip), nullptr, false);
    if (j.is_discarded() || !j.is_object()) throw_input("{}: not a valid JSON object", ip);
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      throw_input("{}: missing 'weight_map' object (tensor name -> shard file)", ip);
    std::map<std::string, std::shared_ptr<SafetensorsFile>> files;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string()) throw_input("{}: weight_map['{}'] must be a file name", ip, it.key());
      const std::string fname = it.value().get<std::string>();
      if (fname.find('/') != std::string::npos || fname == "..")
        throw_input("{}: weight_map['{}'] = '{}' must be a file in the same directory", ip, it.key(), fname);
      auto& f = files[fname];
      if (!f) {
        const fs::path p = fs::path(dir) / fname;
        if (!fs::exists(p)) throw_input("{}: names shard '{}', which does not exist", ip, fname);
        f = SafetensorsFile::open(p.string());
      }
      if (!f->has(it.key())) throw_input("{}: names tensor '{}' in '{}', but that file does not contain it", ip, it.key(), fname);
      c.where_[it.key()] = f;
    }
    // Tensors present in a shard but absent from the index are invisible to HF: flag them.
    for (const auto& [fname, f] : files)
      for (const auto& t : f->header().tensors)
        if (!c.where_.count(t.name))
          throw_input("{}: tensor '{}' in '{}' is missing from the index's weight_map", ip, t.name, fname);
  } else if (fs::exists(single)) {
    auto f = SafetensorsFile::open(single.string());
    for (const auto& t : f->header().tensors) c.where_[t.name] = f;
  } else {
    std::vector<fs::path> found;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".safetensors") found.push_back(e.path());
    if (found.size() != 1)
      throw_input("{}: no model.safetensors or model.safetensors.index.json (found {} .safetensors files)", dir,
                  found.size());
    auto f = SafetensorsFile::open(found[0].string());
    for (const auto& t : f->header().tensors) c.where_[t.name] = f;
  }
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
