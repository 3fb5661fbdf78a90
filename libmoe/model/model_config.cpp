#include "model/model_config.h"

#include "core/error.h"

namespace moe::model {

namespace {
int64_t layer_params(const ModelConfig& c, int layer, bool active_only) {
  int64_t H = c.hidden_size, d = c.kv_channels;
  int64_t n = H;                                  // input layernorm
  n += c.qkv_rows() * H + H * c.num_attention_heads * d;  // qkv, proj
  if (c.add_qkv_bias) n += c.qkv_rows();
  if (c.qk_layernorm) n += 2 * d;
  n += H;  // pre-MLP norm
  if (c.is_moe_layer(layer)) {
    int64_t experts = active_only ? c.moe_router_topk : c.num_experts;
    n += int64_t(c.num_experts) * H;                     // router
    n += experts * 3 * H * c.moe_ffn_hidden_size;        // fc1 (gate, up) + fc2
    if (c.moe_shared_expert_intermediate_size) n += 3 * H * c.moe_shared_expert_intermediate_size;
    if (c.moe_shared_expert_gate) n += H;
  } else {
    n += 3 * H * c.ffn_hidden_size;
  }
  return n;
}
}  // namespace

int64_t ModelConfig::num_parameters() const {
  int64_t n = vocab_size * hidden_size * (untie_embeddings_and_output_weights ? 2 : 1) + hidden_size;
  for (int l = 0; l < num_layers; ++l) n += layer_params(*this, l, false);
  return n;
}

int64_t ModelConfig::num_active_parameters() const {
  int64_t n = vocab_size * hidden_size * (untie_embeddings_and_output_weights ? 2 : 1) + hidden_size;
  for (int l = 0; l < num_layers; ++l) n += layer_params(*this, l, true);
  return n;
}

void validate_config(const ModelConfig& c, const std::string& src) {
  auto positive = [&](int64_t v, const char* field) {
    if (v <= 0) throw_input("{}: '{}' must be a positive integer, got {}", src, field, v);
  };
  positive(c.num_layers, "num_hidden_layers");
  positive(c.hidden_size, "hidden_size");
  positive(c.num_attention_heads, "num_attention_heads");
  positive(c.num_query_groups, "num_key_value_heads");
  positive(c.kv_channels, "head_dim");
  positive(c.vocab_size, "vocab_size");
  if (c.num_attention_heads % c.num_query_groups != 0)
    throw_input("{}: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", src,
                c.num_attention_heads, c.num_query_groups);
  if (c.kv_channels % 2 != 0) throw_input("{}: head_dim ({}) must be even for rotary embeddings", src, c.kv_channels);
  if (!(c.norm_epsilon > 0)) throw_input("{}: 'rms_norm_eps' must be > 0, got {}", src, c.norm_epsilon);
  if (!(c.rotary_base > 1)) throw_input("{}: 'rope_theta' must be > 1, got {}", src, c.rotary_base);
  if (int(c.moe_layer_pattern.size()) != c.num_layers)
    throw_input("{}: internal layer pattern has {} entries for {} layers", src, c.moe_layer_pattern.size(), c.num_layers);
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
  if (c.moe_shared_expert_intermediate_size < 0)
    throw_input("{}: 'shared_expert_intermediate_size' must be >= 0", src);
  const auto& r = c.rope_scaling;
  if (r.type != "default" && !(r.factor > 0))
    throw_input("{}: rope_scaling.factor must be > 0 for rope_type '{}'", src, r.type);
  if (r.type == "llama3" && (r.original_max_position_embeddings <= 0 || !(r.high_freq_factor > r.low_freq_factor)))
    throw_input("{}: rope_scaling (llama3) needs original_max_position_embeddings > 0 and high_freq_factor > "
                "low_freq_factor", src);
}

}  // namespace moe::model
