// Loading a Hugging Face model directory into the canonical state (through WeightMap), and
// writing a canonical state back as an HF directory. Every tensor name and shape the config
// implies is checked before any weight is used.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "model/model_config.h"
#include "model/state_dict.h"

namespace moe::model {
struct WeightRule;
class WeightMap;
}  // namespace moe::model

namespace moe::checkpoint {

// An HF directory's weights in canonical form, built one tensor at a time on request (fused
// tensors are copies; plain ones borrow the mapped files). Every tensor's presence and shape is
// checked when it is opened, before any weight is used.
class HfWeights {
 public:
  HfWeights(const std::string& dir, const model::ModelConfig& c);
  ~HfWeights();
  Tensor canonical(const model::WeightRule& rule) const;
  // Streaming: lets go of the mapped pages the rule's HF tensors were read from (they stay in
  // the page cache), so reading a whole model does not grow the resident set to its size.
  void release(const model::WeightRule& rule) const;
  // Where `t` (from canonical(rule), or a slice of it) lies when its bytes are stored in one of
  // the rule's mapped safetensors files: sets the file and offset and returns true (false for
  // copies and .bin checkpoints).
  bool stored_in(const model::WeightRule& rule, const Tensor& t, const MappedFile** file, uint64_t* offset) const;
  // The byte ranges (file, offset, size) of the rule's HF tensors, in rule.hf order, when every
  // one lies in a mapped safetensors file stored in `dtype` (false otherwise). Reads no weight.
  struct StoredPart {
    const MappedFile* file;
    uint64_t offset, size;
  };
  bool stored_parts(const model::WeightRule& rule, DType dtype, std::vector<StoredPart>* parts) const;
  size_t unused_tensors() const { return unused_; }

 private:
  struct Files;
  std::shared_ptr<Files> files_;
  std::shared_ptr<const model::WeightMap> map_;
  size_t unused_ = 0;
};

struct LoadedModel {
  model::ModelConfig config;
  model::StateDict state;  // canonical names; unfused tensors borrow the mapped safetensors (zero copy)
};

// Weights come from *.safetensors (single or indexed), else pytorch_model.bin (single or
// indexed). InputError naming the file and tensor for a missing tensor or a shape that
// disagrees with config.json.
LoadedModel load_hf_model(const std::string& dir);

// Writes `state` as HF safetensors (model.safetensors, or shards + index above max_shard_bytes)
// into `dir`, which must exist. config.json and tokenizer files are the caller's.
void save_hf_weights(const model::ModelConfig& c, const model::StateDict& state, const std::string& dir,
                     uint64_t max_shard_bytes = uint64_t(5) << 30);

}  // namespace moe::checkpoint
