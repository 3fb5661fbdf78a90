// ModelConfig: the architecture-neutral description of a decoder-only (MoE) transformer, in
// Megatron-Core's vocabulary. Built from HF config.json by load_hf_config (hf_config.h) and
// validated once; every other layer (engine, WeightMap, export, planner) reads only this.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace moe::model {

// Rotary embedding frequency scaling, as HF's rope_scaling.rope_type.
struct RopeScaling {
  std::string type = "default";  // default | linear | llama3 | yarn
  double factor = 1.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 0;          // llama3, yarn
  double beta_fast = 32.0, beta_slow = 1.0;              // yarn
  double attention_factor = 0.0;                         // yarn; 0 = derived from factor (and mscale)
  double mscale = 0.0, mscale_all_dim = 0.0;             // yarn (DeepSeek style); 0 = unset
  bool truncate = true;                                  // yarn
};

struct ModelConfig {
  std::string model_type;  // the HF family: qwen3_moe, qwen2_moe, mixtral, qwen2, qwen3, llama
  int num_layers = 0;
  int hidden_size = 0;
  int ffn_hidden_size = 0;  // dense MLP width (0 if the model has no dense layer)
  int num_attention_heads = 0;
  int num_query_groups = 0;  // key/value heads
  int kv_channels = 0;       // head dim
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double norm_epsilon = 1e-6;
  double rotary_base = 10000.0;
  RopeScaling rope_scaling;
  bool qk_layernorm = false;
  bool add_qkv_bias = false;
  bool untie_embeddings_and_output_weights = true;
  // MoE (num_experts == 0 for dense models).
  int num_experts = 0;
  int moe_ffn_hidden_size = 0;
  int moe_router_topk = 0;
  // Megatron semantics: true = softmax over all experts, top-k, no renormalisation
  // (HF norm_topk_prob=false); false = top-k logits then softmax (renormalised top-k).
  bool moe_router_pre_softmax = false;
  // Aux-loss-free balancing: a per-expert bias (decoder.layers.N.mlp.router.expert_bias) shifts
  // the top-k selection, not the weights. config.json's moe_router_enable_expert_bias says the
  // checkpoint holds it (moectl writes it when trained with --moe_router_enable_expert_bias).
  bool moe_router_enable_expert_bias = false;
  int moe_shared_expert_intermediate_size = 0;  // 0 = no shared expert
  bool moe_shared_expert_gate = false;          // Qwen2-MoE: sigmoid(x . gate_weight) scales it
  std::vector<bool> moe_layer_pattern;          // per layer: true = MoE MLP, false = dense MLP
  DType params_dtype = DType::F32;              // torch_dtype of the checkpoint
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;

  bool is_moe_layer(int layer) const { return num_experts > 0 && moe_layer_pattern.at(size_t(layer)); }
  int query_groups_ratio() const { return num_attention_heads / num_query_groups; }
  int64_t qkv_rows() const { return int64_t(num_query_groups) * (query_groups_ratio() + 2) * kv_channels; }
  // Total parameter count (every tensor the canonical state holds).
  int64_t num_parameters() const;
  // Parameters read per token at decode: everything except the experts not selected.
  int64_t num_active_parameters() const;
};

// The largest value each size may take. They are far above any real model (Llama-3-405B has
// hidden 16384, 126 layers, vocab 128256) and exist so that a corrupt config is refused in one
// line before a size is narrowed to int, multiplied or used to allocate: every product of two
// bounds fits in int64, and the parameter bound keeps the totals (and their bytes) in int64.
struct SizeLimits {
  static constexpr int64_t kLayers = int64_t(1) << 14;   // num_hidden_layers
  static constexpr int64_t kHidden = int64_t(1) << 20;   // hidden_size
  static constexpr int64_t kFfn = int64_t(1) << 22;      // intermediate sizes
  static constexpr int64_t kHeads = int64_t(1) << 14;    // attention and key/value heads
  static constexpr int64_t kHeadDim = int64_t(1) << 14;  // head_dim
  static constexpr int64_t kVocab = int64_t(1) << 24;    // vocab_size
  static constexpr int64_t kExperts = int64_t(1) << 16;  // num_experts
  // MoE layers x experts: one set of tensors (and names) each; DeepSeek-V3 has 58 x 256 = 14848.
  static constexpr int64_t kExpertInstances = int64_t(1) << 18;
  static constexpr int64_t kPositions = int64_t(1) << 30;  // max_position_embeddings
  static constexpr double kParameters = 1e14;              // total parameters
};

// Checks every size against SizeLimits and the internal consistency; InputError naming
// `source` (e.g. ".../config.json"), the field and the valid range.
void validate_config(const ModelConfig& c, const std::string& source);

// num_parameters() in floating point: defined for any field values, so a config can be
// refused for its size before the exact (int64) count is taken.
double approx_num_parameters(const ModelConfig& c);

}  // namespace moe::model
