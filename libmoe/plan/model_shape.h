// ModelShape: the sizes the planner's memory and time models read, taken from a validated
// ModelConfig (or built by hand from Megatron-style size flags and in tests). It adds what
// ModelConfig does not say but Megatron's formulas need: the MLP kind (SwiGLU or not).
#pragma once
#include <cstdint>
#include <vector>

#include "model/model_config.h"

namespace moe::plan {

struct ModelShape {
  int num_layers = 0, hidden_size = 0, ffn_hidden_size = 0;
  int num_attention_heads = 0, num_query_groups = 0, kv_channels = 0;
  int64_t vocab_size = 0;  // unpadded; padded per layout (multiple of 128 x TP)
  int num_experts = 0, moe_ffn_hidden_size = 0, moe_router_topk = 0;
  int moe_shared_expert_intermediate_size = 0;
  bool moe_shared_expert_gate = false, qk_layernorm = false, add_qkv_bias = false;
  bool untie_embeddings_and_output_weights = true;
  bool swiglu = true;           // gated MLP (3 matrices) vs GeLU-style (2 matrices)
  std::vector<bool> moe_layer;  // per layer: MoE MLP (true) or dense MLP (set before the first query)

  static ModelShape from_config(const model::ModelConfig& c);
  bool is_moe() const { return num_experts > 0; }
  int num_moe_layers() const;
  // Number of MoE layers among layers [begin, end).
  int moe_layers_in(int begin, int end) const;
  int64_t padded_vocab(int tp, int divisible_by = 128) const;

  // Parameters of one layer, by how they shard.
  int64_t attention_params() const;      // qkv (+bias) + proj: TP-sharded
  int64_t layer_norm_params() const;     // two RMSNorms (+ q/k norms): replicated
  int64_t dense_mlp_params() const;      // TP-sharded
  int64_t expert_params() const;         // one routed expert: EP x ETP-sharded
  int64_t shared_expert_params() const;  // TP-sharded
  int64_t router_params() const;         // router (+ shared-expert gate): replicated
  int64_t num_parameters() const;        // whole model, unpadded vocabulary

  // Megatron's num_floating_point_operations per token (fwd + bwd, model FLOPs, no recompute)
  // for sequences of `seq_length`, split into its terms.
  struct Flops {
    double attention_linear = 0, attention_core = 0, dense_mlp = 0, moe_mlp = 0, logits = 0;
    double total() const { return attention_linear + attention_core + dense_mlp + moe_mlp + logits; }
  };
  Flops flops_per_token(int64_t seq_length, int64_t padded_vocab) const;

 private:
  mutable std::vector<int> moe_prefix_;  // moe_prefix_[l] = MoE layers before layer l (built on first use)
};

}  // namespace moe::plan
