#include "model/model_config.h"

#include <algorithm>

#include "core/error.h"

namespace moe::model {

namespace {
// N = int64_t for the exact count (valid configs only), double for the size check that must
// not overflow whatever the fields hold.
template <class N>
N layer_params(const ModelConfig& c, int layer, bool active_only) {
  const N H = N(c.hidden_size), d = N(c.kv_channels);
  const N qkv_rows = N(c.num_attention_heads) * d + 2 * N(c.num_query_groups) * d;
  N n = H;                                               // input layernorm
  n += qkv_rows * H + H * N(c.num_attention_heads) * d;  // qkv, proj
  if (c.add_qkv_bias) n += qkv_rows;
  if (c.qk_layernorm) n += 2 * d;
  n += H;  // pre-MLP norm
  if (c.is_moe_layer(layer)) {
    const N experts = N(active_only ? c.moe_router_topk : c.num_experts);
    n += N(c.num_experts) * H;                        // router
    n += experts * 3 * H * N(c.moe_ffn_hidden_size);  // fc1 (gate, up) + fc2
    if (c.moe_shared_expert_intermediate_size) n += 3 * H * N(c.moe_shared_expert_intermediate_size);
    if (c.moe_shared_expert_gate) n += H;
  } else {
    n += 3 * H * N(c.ffn_hidden_size);
  }
  return n;
}

template <class N>
N count_parameters(const ModelConfig& c, bool active_only) {
  N n = N(c.vocab_size) * N(c.hidden_size) * N(c.untie_embeddings_and_output_weights ? 2 : 1) + N(c.hidden_size);
  for (int l = 0; l < c.num_layers; ++l) n += layer_params<N>(c, l, active_only);
  return n;
}
}  // namespace

int64_t ModelConfig::num_parameters() const { return count_parameters<int64_t>(*this, false); }

int64_t ModelConfig::num_active_parameters() const { return count_parameters<int64_t>(*this, true); }

double approx_num_parameters(const ModelConfig& c) {
  // A layer pattern shorter than num_layers (not yet validated) must not be indexed.
  if (c.moe_layer_pattern.size() != size_t(std::max(c.num_layers, 0))) return 0;
  return count_parameters<double>(c, false);
}

void validate_config(const ModelConfig& c, const std::string& src) {
  using L = SizeLimits;
  auto in_range = [&](int64_t v, const char* field, int64_t lo, int64_t hi) {
    if (v < lo || v > hi) throw_input("{}: '{}' must be an integer from {} to {}, got {}", src, field, lo, hi, v);
  };
  auto positive = [&](int64_t v, const char* field) {
    if (v <= 0) throw_input("{}: '{}' must be a positive integer, got {}", src, field, v);
  };
  in_range(c.num_layers, "num_hidden_layers", 1, L::kLayers);
  in_range(c.hidden_size, "hidden_size", 1, L::kHidden);
  in_range(c.num_attention_heads, "num_attention_heads", 1, L::kHeads);
  in_range(c.num_query_groups, "num_key_value_heads", 1, L::kHeads);
  in_range(c.kv_channels, "head_dim", 1, L::kHeadDim);
  in_range(c.vocab_size, "vocab_size", 1, L::kVocab);
  in_range(c.max_position_embeddings, "max_position_embeddings", 0, L::kPositions);  // 0: not given (plan flags)
  in_range(c.ffn_hidden_size, "intermediate_size", 0, L::kFfn);
  in_range(c.num_experts, "num_experts", 0, L::kExperts);
  in_range(c.moe_ffn_hidden_size, "moe_intermediate_size", 0, L::kFfn);
  in_range(c.moe_router_topk, "num_experts_per_tok", 0, L::kExperts);
  in_range(c.moe_shared_expert_intermediate_size, "shared_expert_intermediate_size", 0, L::kFfn);
  in_range(c.bos_token_id, "bos_token_id", -1, c.vocab_size - 1);  // -1: none
  for (int id : c.eos_token_ids) in_range(id, "eos_token_id", 0, c.vocab_size - 1);
  if (c.num_attention_heads % c.num_query_groups != 0)
    throw_input("{}: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", src,
                c.num_attention_heads, c.num_query_groups);
  if (c.kv_channels % 2 != 0) throw_input("{}: head_dim ({}) must be even for rotary embeddings", src, c.kv_channels);
  if (!(c.norm_epsilon > 0)) throw_input("{}: 'rms_norm_eps' must be > 0, got {}", src, c.norm_epsilon);
  if (!(c.rotary_base > 1)) throw_input("{}: 'rope_theta' must be > 1, got {}", src, c.rotary_base);
  if (int(c.moe_layer_pattern.size()) != c.num_layers)
    throw_input("{}: internal layer pattern has {} entries for {} layers", src, c.moe_layer_pattern.size(),
                c.num_layers);
  bool any_dense = false;
  for (int l = 0; l < c.num_layers; ++l) any_dense |= !c.is_moe_layer(l);
  if (any_dense) positive(c.ffn_hidden_size, "intermediate_size");
  if (c.num_experts > 0) {
    positive(c.moe_ffn_hidden_size, "moe_intermediate_size");
    positive(c.moe_router_topk, "num_experts_per_tok");
    if (c.moe_router_topk > c.num_experts)
      throw_input("{}: num_experts_per_tok ({}) exceeds the number of experts ({})", src, c.moe_router_topk,
                  c.num_experts);
  }
  const auto& r = c.rope_scaling;
  if (r.type != "default" && !(r.factor > 0))
    throw_input("{}: rope_scaling.factor must be > 0 for rope_type '{}'", src, r.type);
  if (r.type == "llama3" && (r.original_max_position_embeddings <= 0 || !(r.high_freq_factor > r.low_freq_factor)))
    throw_input(
        "{}: rope_scaling (llama3) needs original_max_position_embeddings > 0 and high_freq_factor > "
        "low_freq_factor",
        src);
  in_range(r.original_max_position_embeddings, "rope_scaling.original_max_position_embeddings", 0, L::kPositions);
  int64_t moe_layers = 0;
  for (int l = 0; l < c.num_layers; ++l) moe_layers += c.is_moe_layer(l) ? 1 : 0;
  if (moe_layers * c.num_experts > L::kExpertInstances)
    throw_input(
        "{}: {} MoE layers x {} experts = {} expert instances, over the limit of {} (check num_hidden_layers "
        "and num_experts)",
        src, moe_layers, c.num_experts, moe_layers * c.num_experts, L::kExpertInstances);
  // Each size may be in range and the product still absurd (and past int64 in the exact count).
  const double params = approx_num_parameters(c);
  if (params > L::kParameters)
    throw_input(
        "{}: the sizes imply {:.3g} parameters, over the limit of {:.0g} (no real model is this large; check "
        "num_hidden_layers, hidden_size, intermediate sizes, num_experts and vocab_size)",
        src, params, L::kParameters);
}

}  // namespace moe::model
