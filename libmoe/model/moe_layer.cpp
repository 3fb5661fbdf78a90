#include "model/moe_layer.h"

#include "kernels/ops.h"

namespace moe::model {

namespace {
bool has(const Tensor& t) { return t.defined() && t.numel() > 0; }
}  // namespace

void moe_layer_forward(const Context& ctx, const ModelConfig& c, const MoeTrainOptions& o, const MoeWeights& w,
                       const float* x, const Batch& b, bool recompute_act, MoeSaved& s, float* y) {
  const Backend& be = ctx.backend;
  const int64_t T = b.size(), D = c.hidden_size, E = ctx.local.experts, K = c.moe_router_topk;
  const int64_t F = c.moe_ffn_hidden_size;
  s.logits_TE.resize(size_t(T * E));
  ops::linear(be, x, T, w.router, nullptr, s.logits_TE.data());
  const float* bias = has(w.expert_bias) ? w.expert_bias.f32() : nullptr;
  router_train_forward(be, o, s.logits_TE.data(), T, E, K, c.moe_router_pre_softmax, b.cu_seqlens, bias, s.router);
  s.disp.emplace(be, s.router.routing, E, o.pad_expert_input_to_capacity ? s.router.capacity : 0);
  const TokenDispatcher& disp = *s.disp;
  const int64_t R = disp.rows();
  s.x_perm.resize(size_t(R * D)), s.y_perm.resize(size_t(R * D)), s.gu_R2F.resize(size_t(R * 2 * F));
  if (recompute_act) std::vector<float>().swap(s.h_RF);
  else s.h_RF.resize(size_t(R * F));
  disp.permute(x, D, s.x_perm.data());
  ops::grouped_swiglu(be, s.x_perm.data(), D, F, disp.offsets(), disp.blocks(), w.fc1_E, w.fc2_E, s.gu_R2F.data(),
                      recompute_act ? nullptr : s.h_RF.data(), s.y_perm.data());
  ops::fill(be, y, 0.0f, T * D);
  disp.unpermute_add(s.y_perm.data(), D, y);

  if (has(w.shared_fc1)) {
    s.shared_out_TD.resize(size_t(T * D));
    swiglu_mlp_forward(ctx, x, T, w.shared_fc1, w.shared_fc2, s.shared, s.shared_out_TD.data(), false, recompute_act);
    if (has(w.shared_gate)) {
      s.gate_logit_T.resize(size_t(T)), s.gate_T.resize(size_t(T));
      ops::linear(be, x, T, w.shared_gate, nullptr, s.gate_logit_T.data());
      ops::shared_gate(be, s.gate_logit_T.data(), s.shared_out_TD.data(), T, D, s.gate_T.data(), y);
    } else {
      ops::add(be, y, s.shared_out_TD.data(), T * D);
    }
  }
}

void moe_layer_backward(const Context& ctx, const ModelConfig& c, const MoeTrainOptions& o, const MoeWeights& w,
                        MoeWeights& g, const float* x, const Batch& b, const MoeSaved& s, const float* dy,
                        float aux_scale, float* dx) {
  const Backend& be = ctx.backend;
  const int64_t T = b.size(), D = c.hidden_size, E = ctx.local.experts, K = c.moe_router_topk;
  const int64_t F = c.moe_ffn_hidden_size;
  const TokenDispatcher& disp = *s.disp;
  const int64_t R = disp.rows();
  // Combine backward: each row's output gradient is its weight times the token's gradient, and
  // each weight's gradient is the token's gradient dotted with the row's output.
  std::vector<float> dy_perm(static_cast<size_t>(R * D)), dweight(static_cast<size_t>(T * K));
  disp.unpermute_add_backward(dy, s.y_perm.data(), D, dy_perm.data(), dweight.data());
  std::vector<float> dx_perm(static_cast<size_t>(R * D));
  ops::grouped_swiglu_backward(be, s.x_perm.data(), D, F, disp.offsets(), disp.blocks(), w.fc1_E, w.fc2_E,
                               s.gu_R2F.data(), s.h_RF.empty() ? nullptr : s.h_RF.data(), dy_perm.data(),
                               dx_perm.data(), g.fc1_E, g.fc2_E);

  // Router: d(logits) from the weights and the auxiliary losses, then its linear layer.
  std::vector<float> dlogits(static_cast<size_t>(T * E));
  router_train_backward(be, o, s.logits_TE.data(), T, E, K, c.moe_router_pre_softmax, b.cu_seqlens, s.router,
                        dweight.data(), aux_scale, dlogits.data());
  ops::linear_backward_weight(be, dlogits.data(), x, T, E, D, g.router.f32());
  ops::linear_backward_input(be, dlogits.data(), T, w.router.f32(), E, D, dx, false);
  disp.permute_backward_add(dx_perm.data(), D, dx);

  if (has(w.shared_fc1)) {
    std::vector<float> dshared(static_cast<size_t>(T * D)), dgate_logit(static_cast<size_t>(T));
    if (has(w.shared_gate))
      ops::shared_gate_backward(be, dy, s.shared_out_TD.data(), s.gate_T.data(), T, D, dshared.data(),
                                dgate_logit.data());
    else ops::copy(be, dshared.data(), dy, T * D);
    swiglu_mlp_backward(ctx, x, T, w.shared_fc1, w.shared_fc2, s.shared, dshared.data(), dx, true, g.shared_fc1,
                        g.shared_fc2);
    if (has(w.shared_gate)) {
      ops::linear_backward_weight(be, dgate_logit.data(), x, T, 1, D, g.shared_gate.f32());
      ops::linear_backward_input(be, dgate_logit.data(), T, w.shared_gate.f32(), 1, D, dx, true);
    }
  }
}

}  // namespace moe::model
