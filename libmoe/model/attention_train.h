// Self-attention block for training (CPU, fp32): fused QKV in Megatron's per-group layout,
// optional q/k RMSNorm per head, RoPE at each token's position within its sequence, causal
// attention that never crosses the packed sequences' boundaries, output projection. The
// forward keeps exactly what the backward needs (AttentionSaved); weight gradients accumulate.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "model/layer_weights.h"
#include "model/rope.h"

namespace moe::model {

struct AttentionSaved {
  std::vector<float> qkv;      // [T, qkv_rows] projection output (+ bias), before q/k norm
  std::vector<float> q, k, v;  // [T, nh, d], [T, ng, d], [T, ng, d] as attention saw them
  std::vector<float> out;      // [T, nh, d] attention output (input of linear_proj)
  std::vector<float> lse;      // [T, nh]
};

struct PackedPositions {
  std::span<const int32_t> position_ids;  // [T]
  std::span<const int32_t> cu_seqlens;    // [S + 1]
};

// x_TD: normalised input; y_TD overwritten. `rope` must cover every position id.
void attention_train_forward(const ModelConfig& c, const AttentionWeights& w, const float* x_TD, int64_t T,
                             const PackedPositions& pos, const RopeTable& rope, AttentionSaved& saved, float* y_TD);

// dx_TD overwritten with d(input); gradients of w's tensors accumulated into `g` (same layout).
void attention_train_backward(const ModelConfig& c, const AttentionWeights& w, AttentionWeights& g, const float* x_TD,
                              int64_t T, const PackedPositions& pos, const RopeTable& rope,
                              const AttentionSaved& saved, const float* dy_TD, float* dx_TD);

}  // namespace moe::model
