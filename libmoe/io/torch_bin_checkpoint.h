// The weights of an HF model directory saved with torch.save instead of safetensors:
// pytorch_model.bin, or shards named by pytorch_model.bin.index.json. Tensors borrow the
// mapped files; the restricted unpickler (pickle.h) reads the state dicts.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/torch_file.h"

namespace moe::io {

class TorchBinCheckpoint {
 public:
  static bool present(const std::string& dir);
  // InputError naming the file for a malformed index, a missing shard, or a state dict that
  // is not a name -> tensor mapping.
  static TorchBinCheckpoint open_dir(const std::string& dir);
  const std::vector<std::string>& names() const { return names_; }  // sorted
  bool has(const std::string& name) const { return where_.count(name) != 0; }
  Shape shape(const std::string& name) const { return at(name).ref.shape; }
  Tensor get(const std::string& name) const { return at(name).file->tensor(at(name).ref); }
  const std::string& file_of(const std::string& name) const { return at(name).path; }

 private:
  struct Where {
    std::shared_ptr<TorchFile> file;
    std::string path;
    TensorRef ref;
  };
  const Where& at(const std::string& name) const;
  std::string dir_;
  std::vector<std::string> names_;
  std::map<std::string, Where> where_;
};

}  // namespace moe::io
