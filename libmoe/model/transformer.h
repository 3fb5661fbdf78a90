// The decoder-only transformer (GPTModel) on the CPU, forward for inference: embedding,
// layers of [RMSNorm -> attention -> residual, RMSNorm -> MoE or dense MLP -> residual],
// final norm, LM head (tied or not). Built from a ModelConfig and a canonical StateDict.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "model/kv_cache.h"
#include "model/layer_weights.h"
#include "model/rope.h"

namespace moe::model {

class Transformer {
 public:
  // Checks that `state` holds every canonical tensor with the shape `config` implies
  // (InputError naming the tensor); keeps references to the tensors (no copy).
  Transformer(ModelConfig config, StateDict state);

  const ModelConfig& config() const { return cfg_; }
  const StateDict& state() const { return state_; }
  KvCache new_cache() const { return KvCache(cfg_.num_layers, cfg_.num_query_groups, cfg_.kv_channels); }

  // Runs `ids` at positions cache.length() .. and appends them to the cache. Writes logits
  // [V] of the last token to `logits` (or [T, V] of every token with all_logits).
  void forward(std::span<const int32_t> ids, KvCache& cache, float* logits, bool all_logits = false);

 private:
  ModelConfig cfg_;
  StateDict state_;
  std::vector<LayerWeights> layers_;
  Tensor embedding_, final_norm_, output_;
  RopeTable rope_;
};

}  // namespace moe::model
