#include "model/train_options.h"

#include <cmath>

#include "core/error.h"

namespace moe::model {

const char* to_string(Recompute r) {
  switch (r) {
    case Recompute::kNone: return "none";
    case Recompute::kSelective: return "selective";
    case Recompute::kFull: return "full";
  }
  return "none";
}

bool parse_recompute(const std::string& s, Recompute* out) {
  if (s == "none") *out = Recompute::kNone;
  else if (s == "selective") *out = Recompute::kSelective;
  else if (s == "full") *out = Recompute::kFull;
  else return false;
  return true;
}

void StepStats::add(const StepStats& o) {
  lm_loss_sum += o.lm_loss_sum, loss_tokens += o.loss_tokens, correct += o.correct;
  aux_loss += o.aux_loss, z_loss += o.z_loss;
  if (tokens_per_expert.size() < o.tokens_per_expert.size()) tokens_per_expert.resize(o.tokens_per_expert.size());
  for (size_t i = 0; i < o.tokens_per_expert.size(); ++i) tokens_per_expert[i] += o.tokens_per_expert[i];
}

void validate_train_options(const TrainOptions& o, const ModelConfig& c) {
  const auto& r = o.recompute;
  if (r.granularity == Recompute::kFull) {
    if (r.method != "uniform" && r.method != "block")
      throw_input("--recompute_method '{}' is not one of uniform, block", r.method);
    if (r.num_layers < 1 || r.num_layers > c.num_layers)
      throw_input("--recompute_num_layers {} must be in 1..{} (the model's layers)", r.num_layers, c.num_layers);
  }
  for (const auto& m : r.modules)
    if (m != "core_attn" && m != "moe_act" && m != "layernorm" && m != "mlp" && m != "moe")
      throw_input("--recompute_modules '{}' is not supported; use core_attn, moe_act, layernorm, mlp or moe", m);
  const auto& m = o.moe;
  if (m.load_balancing_type != "aux_loss" && m.load_balancing_type != "seq_aux_loss" && m.load_balancing_type != "none")
    throw_input("--moe_router_load_balancing_type '{}' is not one of aux_loss, seq_aux_loss, none",
                m.load_balancing_type);
  if (!(m.aux_loss_coeff >= 0 && std::isfinite(m.aux_loss_coeff)))
    throw_input("--moe_aux_loss_coeff must be a finite number >= 0, got {}", m.aux_loss_coeff);
  if (!(m.z_loss_coeff >= 0 && std::isfinite(m.z_loss_coeff)))
    throw_input("--moe_z_loss_coeff must be a finite number >= 0, got {}", m.z_loss_coeff);
  if (!(m.capacity_factor >= 0 && std::isfinite(m.capacity_factor)))  // 0: dropless (the flag not given)
    throw_input("--moe_expert_capacity_factor must be a finite number > 0, got {}", m.capacity_factor);
  if (!(m.bias_update_rate >= 0 && std::isfinite(m.bias_update_rate)))
    throw_input("--moe_router_bias_update_rate must be a finite number >= 0, got {}", m.bias_update_rate);
  if (m.token_drop_policy != "probs" && m.token_drop_policy != "position")
    throw_input("--moe_token_drop_policy '{}' is not one of probs, position", m.token_drop_policy);
  if (m.pad_expert_input_to_capacity && m.capacity_factor <= 0)
    throw_input("--moe_pad_expert_input_to_capacity needs --moe_expert_capacity_factor");
}

}  // namespace moe::model
