// The tensors one decoder layer reads, looked up once from the canonical state. Norm weights,
// biases and the router are widened to f32 (small); projections keep their stored dtype.
#pragma once
#include <vector>

#include "core/tensor.h"
#include "model/model_config.h"
#include "model/state_dict.h"

namespace moe::model {

struct AttentionWeights {
  Tensor input_norm;      // [H] f32
  Tensor qkv, qkv_bias;   // [qkv_rows, H], [qkv_rows] f32 (optional)
  Tensor q_norm, k_norm;  // [d] f32 (optional)
  Tensor proj;            // [H, nh*d]
};

struct MoeWeights {
  Tensor router;                     // [E, H] f32
  Tensor expert_bias;                // [E] f32, optional: shifts the selection only
  std::vector<Tensor> fc1_E, fc2_E;  // per expert [2Fe, H], [H, Fe]
  Tensor shared_fc1, shared_fc2;     // optional
  Tensor shared_gate;                // [1, H] f32, optional
};

struct MlpWeights {
  Tensor fc1, fc2;  // [2F, H], [H, F]
};

struct LayerWeights {
  AttentionWeights attn;
  Tensor pre_mlp_norm;  // [H] f32 (pre_mlp_layernorm or the dense fc1's fused norm)
  bool is_moe = false;
  MoeWeights moe;
  MlpWeights mlp;
};

// Looks up layer `i`; InternalError if the state lacks a tensor (load_hf checks it first).
// `experts`: how many experts the state holds per layer, under EP-local names 0..experts-1
// (-1: every expert of the config).
LayerWeights layer_weights(const ModelConfig& c, const StateDict& s, int i, int experts = -1);
// The tensor under `name`, widened to f32 if it is not already.
Tensor f32_param(const StateDict& s, const std::string& name);

}  // namespace moe::model
