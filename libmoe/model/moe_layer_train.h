// MoE layer for training (CPU, fp32): router -> token dispatcher -> grouped experts ->
// combine, plus the (optionally gated) shared expert; the forward keeps what the backward
// needs, the backward accumulates every weight gradient and the auxiliary losses' gradients.
#pragma once
#include <optional>
#include <span>
#include <vector>

#include "model/layer_weights.h"
#include "model/mlp_train.h"
#include "model/router_train.h"
#include "model/token_dispatcher.h"

namespace moe::model {

struct MoeSaved {
  std::vector<float> logits_TE;
  RouterSaved router;
  std::optional<TokenDispatcher> disp;
  std::vector<float> x_perm, y_perm;  // expert inputs and outputs, rows grouped by expert
  std::vector<SwigluSaved> experts;
  SwigluSaved shared;
  std::vector<float> shared_out_TD, gate_T;
};

// x_TD: normalised input; y_TD overwritten. expert_bias_E may be null.
void moe_layer_train_forward(const ModelConfig& c, const MoeTrainOptions& o, const MoeWeights& w,
                             const float* expert_bias_E, const float* x_TD, int64_t T,
                             std::span<const int32_t> cu_seqlens, bool recompute_act, MoeSaved& saved, float* y_TD);

// dx_TD overwritten. aux_scale weights this micro-batch's auxiliary losses in the objective.
void moe_layer_train_backward(const ModelConfig& c, const MoeTrainOptions& o, const MoeWeights& w, MoeWeights& g,
                              const float* x_TD, int64_t T, std::span<const int32_t> cu_seqlens,
                              const MoeSaved& saved, const float* dy_TD, float aux_scale, float* dx_TD);

}  // namespace moe::model
