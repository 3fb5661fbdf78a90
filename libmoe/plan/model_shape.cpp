#include "plan/model_shape.h"

namespace moe::plan {

ModelShape ModelShape::from_config(const model::ModelConfig& c) {
  ModelShape s;
  s.num_layers = c.num_layers;
  s.hidden_size = c.hidden_size;
  s.ffn_hidden_size = c.ffn_hidden_size;
  s.num_attention_heads = c.num_attention_heads;
  s.num_query_groups = c.num_query_groups;
  s.kv_channels = c.kv_channels;
  s.vocab_size = c.vocab_size;
  s.num_experts = c.num_experts;
  s.moe_ffn_hidden_size = c.moe_ffn_hidden_size;
  s.moe_router_topk = c.moe_router_topk;
  s.moe_shared_expert_intermediate_size = c.moe_shared_expert_intermediate_size;
  s.moe_shared_expert_gate = c.moe_shared_expert_gate;
  s.qk_layernorm = c.qk_layernorm;
  s.add_qkv_bias = c.add_qkv_bias;
  s.untie_embeddings_and_output_weights = c.untie_embeddings_and_output_weights;
  s.swiglu = true;  // every family load_hf_config accepts uses SiLU-gated MLPs
  s.moe_layer.resize(size_t(c.num_layers));
  for (int l = 0; l < c.num_layers; ++l) s.moe_layer[size_t(l)] = c.is_moe_layer(l);
  return s;
}

int ModelShape::num_moe_layers() const { return moe_layers_in(0, num_layers); }

int ModelShape::moe_layers_in(int begin, int end) const {
  if (moe_prefix_.size() != moe_layer.size() + 1) {
    moe_prefix_.assign(moe_layer.size() + 1, 0);
    for (size_t l = 0; l < moe_layer.size(); ++l) moe_prefix_[l + 1] = moe_prefix_[l] + (moe_layer[l] ? 1 : 0);
  }
  return moe_prefix_[size_t(end)] - moe_prefix_[size_t(begin)];
}

int64_t ModelShape::padded_vocab(int tp, int divisible_by) const {
  const int64_t m = int64_t(divisible_by) * tp;
  return (vocab_size + m - 1) / m * m;
}

int64_t ModelShape::attention_params() const {
  const int64_t h = hidden_size, q = int64_t(num_attention_heads) * kv_channels,
                kv = int64_t(num_query_groups) * kv_channels;
  return h * (q + 2 * kv) + q * h + (add_qkv_bias ? q + 2 * kv : 0);
}

int64_t ModelShape::layer_norm_params() const {
  return 2 * int64_t(hidden_size) + (qk_layernorm ? 2 * kv_channels : 0);
}

int64_t ModelShape::dense_mlp_params() const { return int64_t(swiglu ? 3 : 2) * hidden_size * ffn_hidden_size; }

int64_t ModelShape::expert_params() const { return int64_t(swiglu ? 3 : 2) * hidden_size * moe_ffn_hidden_size; }

int64_t ModelShape::shared_expert_params() const {
  return int64_t(swiglu ? 3 : 2) * hidden_size * moe_shared_expert_intermediate_size;
}

int64_t ModelShape::router_params() const {
  return int64_t(num_experts) * hidden_size + (moe_shared_expert_gate ? hidden_size : 0);
}

int64_t ModelShape::num_parameters() const {
  const int64_t moe = num_moe_layers(), dense = num_layers - moe;
  int64_t n = vocab_size * hidden_size * (untie_embeddings_and_output_weights ? 2 : 1) + hidden_size;
  n += int64_t(num_layers) * (attention_params() + layer_norm_params());
  n += dense * dense_mlp_params();
  n += moe * (int64_t(num_experts) * expert_params() + shared_expert_params() + router_params());
  return n;
}

ModelShape::Flops ModelShape::flops_per_token(int64_t seq, int64_t V) const {
  // training.py::transformer_flops, BSHD: 6 = 3 passes (fwd, dgrad, wgrad) x 2 (multiply-add).
  const double h = hidden_size, q = double(num_attention_heads) * kv_channels,
               kv = double(num_query_groups) * kv_channels, ffx = swiglu ? 3 : 2;
  const double L = num_layers, Lm = num_moe_layers(), Ld = L - Lm;
  Flops f;
  f.attention_linear = 6 * L * (h * (q + 2 * kv) + q * h);
  f.attention_core = 6 * L * q * double(seq);  // causal: half of QK^T and PV, per token s*q each
  f.dense_mlp = 6 * h * ffx * ffn_hidden_size * Ld;
  f.moe_mlp =
      6 * h *
      (ffx * double(moe_ffn_hidden_size) * moe_router_topk + ffx * double(moe_shared_expert_intermediate_size)) * Lm;
  f.logits = 6 * h * double(V);
  return f;
}

}  // namespace moe::plan
