// The MoE layer, one forward for inference and training: router -> token dispatcher -> grouped
// experts -> combine, plus the (optionally gated) shared expert. The forward leaves in `acts`
// what the backward needs (training keeps them per layer; inference reuses one scratch object);
// the backward accumulates every weight gradient and the auxiliary losses' gradients. Options
// carry the training-only behaviour (capacity, losses); inference passes the defaults.
#pragma once
#include <optional>
#include <vector>

#include "model/batch.h"
#include "model/context.h"
#include "model/layer_weights.h"
#include "model/mlp.h"
#include "model/router_train.h"
#include "model/token_dispatcher.h"

namespace moe::model {

struct MoeSaved {
  std::vector<float> logits_TE;
  RouterSaved router;
  std::optional<TokenDispatcher> disp;
  std::vector<float> x_perm, y_perm;  // expert inputs and outputs, rows grouped by expert
  std::vector<float> gu_R2F, h_RF;    // the experts' fc1 outputs and activations (h empty: recomputed)
  SwigluSaved shared;
  std::vector<float> shared_out_TD, gate_logit_T, gate_T;
};

// x_TD: normalised input; y_TD overwritten. The router routes with w.expert_bias when the
// model has one.
void moe_layer_forward(const Context& ctx, const ModelConfig& c, const MoeTrainOptions& o, const MoeWeights& w,
                       const float* x_TD, const Batch& b, bool recompute_act, MoeSaved& acts, float* y_TD);

// dx_TD overwritten. aux_scale weights this micro-batch's auxiliary losses in the objective.
void moe_layer_backward(const Context& ctx, const ModelConfig& c, const MoeTrainOptions& o, const MoeWeights& w,
                        MoeWeights& g, const float* x_TD, const Batch& b, const MoeSaved& acts, const float* dy_TD,
                        float aux_scale, float* dx_TD);

}  // namespace moe::model
