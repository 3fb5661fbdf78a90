// Loading a Hugging Face model directory into the canonical state (through WeightMap), and
// writing a canonical state back as an HF directory. Every tensor name and shape the config
// implies is checked before any weight is used.
#pragma once
#include <memory>
#include <string>

#include "model/model_config.h"
#include "model/state_dict.h"

namespace moe::model {

struct WeightRule;
class WeightMap;

// An HF directory's weights in canonical form, built one tensor at a time on request (fused
// tensors are copies; plain ones borrow the mapped files). Every tensor's presence and shape is
// checked when it is opened, before any weight is used.
class HfWeights {
 public:
  HfWeights(const std::string& dir, const ModelConfig& c);
  ~HfWeights();
  Tensor canonical(const WeightRule& rule) const;
  size_t unused_tensors() const { return unused_; }

 private:
  struct Files;
  std::shared_ptr<Files> files_;
  std::shared_ptr<const WeightMap> map_;
  size_t unused_ = 0;
};

struct LoadedModel {
  ModelConfig config;
  StateDict state;  // canonical names; unfused tensors borrow the mapped safetensors (zero copy)
};

// Weights come from *.safetensors (single or indexed), else pytorch_model.bin (single or
// indexed). InputError naming the file and tensor for a missing tensor or a shape that
// disagrees with config.json.
LoadedModel load_hf_model(const std::string& dir);

// Writes `state` as HF safetensors (model.safetensors, or shards + index above max_shard_bytes)
// into `dir`, which must exist. config.json and tokenizer files are the caller's.
void save_hf_weights(const ModelConfig& c, const StateDict& state, const std::string& dir,
                     uint64_t max_shard_bytes = uint64_t(5) << 30);

}  // namespace moe::model
