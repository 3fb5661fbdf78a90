#include "model/layer_weights.h"

namespace moe::model {

namespace {
const Tensor& get(const StateDict& s, const std::string& name) {
  auto it = s.find(name);
  MOE_ASSERT(it != s.end(), "canonical state lacks {}", name);
  return it->second;
}
}  // namespace

Tensor f32_param(const StateDict& s, const std::string& name) {
  const Tensor& t = get(s, name);
  return t.dtype() == DType::F32 ? t : t.to(DType::F32);
}

LayerWeights layer_weights(const ModelConfig& c, const StateDict& s, int i, int experts) {
  const std::string L = names::layer(i);
  LayerWeights w;
  w.attn.input_norm = f32_param(s, L + names::kInputNorm);
  w.attn.qkv = get(s, L + names::kQkv);
  if (c.add_qkv_bias) w.attn.qkv_bias = f32_param(s, L + names::kQkvBias);
  if (c.qk_layernorm) {
    w.attn.q_norm = f32_param(s, L + names::kQNorm);
    w.attn.k_norm = f32_param(s, L + names::kKNorm);
  }
  w.attn.proj = get(s, L + names::kProj);
  w.is_moe = c.is_moe_layer(i);
  if (w.is_moe) {
    w.pre_mlp_norm = f32_param(s, L + names::kPreMlpNorm);
    w.moe.router = f32_param(s, L + names::kRouter);
    if (c.moe_router_enable_expert_bias) w.moe.expert_bias = f32_param(s, L + names::kExpertBias);
    for (int e = 0; e < (experts < 0 ? c.num_experts : experts); ++e) {
      w.moe.fc1_E.push_back(get(s, L + names::expert_fc1(e)));
      w.moe.fc2_E.push_back(get(s, L + names::expert_fc2(e)));
    }
    if (c.moe_shared_expert_intermediate_size > 0) {
      w.moe.shared_fc1 = get(s, L + names::kSharedFc1);
      w.moe.shared_fc2 = get(s, L + names::kSharedFc2);
      if (c.moe_shared_expert_gate) w.moe.shared_gate = f32_param(s, L + names::kSharedGate);
    }
  } else {
    w.pre_mlp_norm = f32_param(s, L + names::kDenseNorm);
    w.mlp.fc1 = get(s, L + names::kDenseFc1);
    w.mlp.fc2 = get(s, L + names::kDenseFc2);
  }
  return w;
}

}  // namespace moe::model
