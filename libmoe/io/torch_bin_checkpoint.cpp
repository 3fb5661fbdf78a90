#include "io/torch_bin_checkpoint.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace moe::io {

namespace fs = std::filesystem;

bool TorchBinCheckpoint::present(const std::string& dir) {
  return fs::exists(fs::path(dir) / "pytorch_model.bin") || fs::exists(fs::path(dir) / "pytorch_model.bin.index.json");
}

TorchBinCheckpoint TorchBinCheckpoint::open_dir(const std::string& dir) {
  TorchBinCheckpoint c;
  c.dir_ = dir;
  std::vector<std::string> files;
  const fs::path index = fs::path(dir) / "pytorch_model.bin.index.json";
  std::map<std::string, std::string> expected;  // name -> file, from the index
  if (fs::exists(index)) {
    auto j = nlohmann::json::parse(read_text_file(index.string()), nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw_input("{}: expected a JSON object with a 'weight_map' (tensor name -> shard file)", index.string());
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string()) throw_input("{}: weight_map['{}'] must be a file name", index.string(), it.key());
      const std::string f = it.value().get<std::string>();
      if (f.find('/') != std::string::npos)
        throw_input("{}: shard '{}' must be in the same directory", index.string(), f);
      expected[it.key()] = f;
      if (std::find(files.begin(), files.end(), f) == files.end()) files.push_back(f);
    }
  } else {
    files.push_back("pytorch_model.bin");
  }
  for (const auto& f : files) {
    const std::string path = (fs::path(dir) / f).string();
    if (!fs::exists(path)) throw_input("{}: shard '{}' named by the index does not exist", dir, f);
    auto tf = std::make_shared<TorchFile>(TorchFile::open(path));
    const PyPtr& root = tf->root();
    if (root->kind != PyValue::kDict && root->kind != PyValue::kOrderedDict)
      throw_input("{}: expected a state dict (name -> tensor) at the top level", path);
    for (const auto& [k, v] : root->entries) {
      if (k->kind != PyValue::kStr || v->kind != PyValue::kTensor)
        throw_input("{}: state dict entries must be name -> tensor", path);
      if (!expected.empty() && (!expected.count(k->s) || expected[k->s] != f))
        throw_input("{}: tensor '{}' is in '{}' but the index says otherwise", index.string(), k->s, f);
      c.where_[k->s] = {tf, path, v->tensor};
    }
  }
  for (const auto& [name, file] : expected)
    if (!c.where_.count(name))
      throw_input("{}: names tensor '{}' in '{}', which does not contain it", index.string(), name, file);
  for (const auto& [name, w] : c.where_) c.names_.push_back(name);
  return c;
}

const TorchBinCheckpoint::Where& TorchBinCheckpoint::at(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw_input("{}: no tensor named '{}' in the checkpoint", dir_, name);
  return it->second;
}

}  // namespace moe::io
