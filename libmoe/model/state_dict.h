// The canonical state: every parameter under its Megatron-Core GPTModel name
// (reference/megatron-format.md section 3), whole (unsharded). The only internal naming.
#pragma once
#include <cctype>
#include <cstdint>
#include <map>
#include <string>

#include "core/tensor.h"

namespace moe::model {

using StateDict = std::map<std::string, Tensor>;

// Canonical names, in one place.
namespace names {
inline std::string layer(int i) { return "decoder.layers." + std::to_string(i) + "."; }
inline const std::string kEmbedding = "embedding.word_embeddings.weight";
inline const std::string kFinalNorm = "decoder.final_layernorm.weight";
inline const std::string kOutput = "output_layer.weight";
inline const std::string kInputNorm = "self_attention.linear_qkv.layer_norm_weight";
inline const std::string kQkv = "self_attention.linear_qkv.weight";
inline const std::string kQkvBias = "self_attention.linear_qkv.bias";
inline const std::string kQNorm = "self_attention.q_layernorm.weight";
inline const std::string kKNorm = "self_attention.k_layernorm.weight";
inline const std::string kProj = "self_attention.linear_proj.weight";
inline const std::string kPreMlpNorm = "pre_mlp_layernorm.weight";         // MoE layers
inline const std::string kDenseNorm = "mlp.linear_fc1.layer_norm_weight";  // dense layers (TE fused norm)
inline const std::string kDenseFc1 = "mlp.linear_fc1.weight";
inline const std::string kDenseFc2 = "mlp.linear_fc2.weight";
inline const std::string kRouter = "mlp.router.weight";
inline const std::string kExpertBias = "mlp.router.expert_bias";  // a buffer (fp32), not a parameter
inline std::string expert_fc1(int e) { return "mlp.experts.linear_fc1.weight" + std::to_string(e); }
inline std::string expert_fc2(int e) { return "mlp.experts.linear_fc2.weight" + std::to_string(e); }
inline const std::string kSharedFc1 = "mlp.shared_experts.linear_fc1.weight";
inline const std::string kSharedFc2 = "mlp.shared_experts.linear_fc2.weight";
inline const std::string kSharedGate = "mlp.shared_experts.gate_weight";
// An expert tensor's index (the digits after "mlp.experts.linear_fcN.weight"), -1 for any other.
inline int64_t expert_index(const std::string& name) {
  if (name.find(".mlp.experts.linear_fc") == std::string::npos) return -1;
  const size_t digits = name.find_last_not_of("0123456789") + 1;
  return digits < name.size() ? std::stoll(name.substr(digits)) : -1;
}
// `name` with its expert index moved by `shift` (EP-local <-> global); other names unchanged.
inline std::string shift_expert(const std::string& name, int64_t shift) {
  const int64_t e = expert_index(name);
  if (e < 0 || shift == 0) return name;
  return name.substr(0, name.find_last_not_of("0123456789") + 1) + std::to_string(e + shift);
}
// A layer tensor's layer number ("decoder.layers.N."), -1 for any other name.
inline int layer_index(const std::string& name) {
  static const std::string prefix = "decoder.layers.";
  if (name.rfind(prefix, 0) != 0 || name.size() <= prefix.size() || !std::isdigit(uint8_t(name[prefix.size()])))
    return -1;
  return std::stoi(name.substr(prefix.size()));
}
// `name` with its layer number moved by `shift` (global <-> stage-local); other names unchanged.
inline std::string shift_layer(const std::string& name, int shift) {
  const int i = layer_index(name);
  if (i < 0 || shift == 0) return name;
  return layer(i + shift) + name.substr(name.find('.', 15) + 1);
}
}  // namespace names

}  // namespace moe::model
