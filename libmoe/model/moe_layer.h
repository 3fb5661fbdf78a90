// MoE layer (forward, inference): router -> token dispatcher -> grouped experts -> combine,
// plus the shared expert (optionally gated by sigmoid(x . gate_weight), Qwen2-MoE).
#pragma once
#include "model/layer_weights.h"

namespace moe::model {

// x_TD: normalised input; y_TD: output (overwritten).
void moe_layer_forward(const ModelConfig& c, const MoeWeights& w, const float* x_TD, int64_t T, float* y_TD);

// Grouped experts: expert e runs once over its rows [offset(e), offset(e)+count(e)) of x_perm.
class TokenDispatcher;
void grouped_experts_forward(const MoeWeights& w, const TokenDispatcher& disp, const float* x_perm, int64_t D,
                             float* y_perm);

}  // namespace moe::model
