#include "model/moe_layer_train.h"

#include <cmath>

#include "core/parallel.h"
#include "kernels/cpu/gemm.h"

namespace moe::model {

namespace k = kernels::cpu;

namespace {
bool has(const Tensor& t) { return t.defined() && t.numel() > 0; }

// Runs fn(e) for every expert with rows, side by side, balanced by row counts.
template <class F>
void for_each_expert(const TokenDispatcher& disp, F&& fn) {
  std::vector<int64_t> cost(static_cast<size_t>(disp.num_experts()));
  for (int64_t e = 0; e < disp.num_experts(); ++e) cost[size_t(e)] = disp.block(e);
  parallel_items(cost, [&](int64_t e) { fn(e); });
}
}  // namespace

void moe_layer_train_forward(const ModelConfig& c, const MoeTrainOptions& o, const MoeWeights& w, const float* bias,
                             const float* x, int64_t T, std::span<const int32_t> cu, bool recompute_act, MoeSaved& s,
                             float* y) {
  const int64_t D = c.hidden_size, E = c.num_experts, K = c.moe_router_topk, F = c.moe_ffn_hidden_size;
  s.logits_TE.resize(size_t(T * E));
  k::gemm_nt(T, E, D, x, w.router.f32(), s.logits_TE.data(), false);
  router_train_forward(o, s.logits_TE.data(), T, E, K, c.moe_router_pre_softmax, cu, bias, s.router);
  s.disp.emplace(s.router.routing, E, o.pad_expert_input_to_capacity ? s.router.capacity : 0);
  const TokenDispatcher& disp = *s.disp;
  s.x_perm.resize(size_t(disp.rows() * D)), s.y_perm.resize(size_t(disp.rows() * D));
  disp.permute(x, D, s.x_perm.data());
  s.experts.resize(size_t(E));
  for_each_expert(disp, [&](int64_t e) {
    const int64_t off = disp.offset(e);
    swiglu_mlp_train_forward(s.x_perm.data() + off * D, disp.block(e), D, F, w.fc1_E[size_t(e)].f32(),
                             w.fc2_E[size_t(e)].f32(), s.experts[size_t(e)], s.y_perm.data() + off * D, false,
                             recompute_act);
  });
  std::fill(y, y + T * D, 0.0f);
  disp.unpermute_add(s.y_perm.data(), D, y);

  if (has(w.shared_fc1)) {
    const int64_t Fs = w.shared_fc2.dim(1);
    s.shared_out_TD.resize(size_t(T * D));
    swiglu_mlp_train_forward(x, T, D, Fs, w.shared_fc1.f32(), w.shared_fc2.f32(), s.shared, s.shared_out_TD.data(),
                             false, recompute_act);
    s.gate_T.assign(size_t(T), 1.0f);
    if (has(w.shared_gate)) {
      k::gemm_nt(T, 1, D, x, w.shared_gate.f32(), s.gate_T.data(), false);
      for (auto& g : s.gate_T) g = 1.0f / (1.0f + std::exp(-g));
    }
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < D; ++i) y[t * D + i] += s.gate_T[size_t(t)] * s.shared_out_TD[size_t(t * D + i)];
  }
}

void moe_layer_train_backward(const ModelConfig& c, const MoeTrainOptions& o, const MoeWeights& w, MoeWeights& g,
                              const float* x, int64_t T, std::span<const int32_t> cu, const MoeSaved& s,
                              const float* dy, float aux_scale, float* dx) {
  const int64_t D = c.hidden_size, E = c.num_experts, K = c.moe_router_topk, F = c.moe_ffn_hidden_size;
  const TokenDispatcher& disp = *s.disp;
  const int64_t R = disp.rows();
  // Combine backward: each row's output gradient is its weight times the token's gradient, and
  // each weight's gradient is the token's gradient dotted with the row's output.
  std::vector<float> dy_perm(static_cast<size_t>(R * D), 0.0f), dweight(static_cast<size_t>(T * K), 0.0f);
  parallel_for(R, [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const int64_t t = disp.token_of_row(row), slot = disp.slot_of_row(row);
      if (t < 0) continue;
      const float wt = s.router.routing.weight_TK[size_t(slot)];
      const float* g_t = dy + t * D;
      const float* yr = s.y_perm.data() + row * D;
      float* d = dy_perm.data() + row * D;
      double dot = 0;
      for (int64_t i = 0; i < D; ++i) d[i] = wt * g_t[i], dot += double(g_t[i]) * yr[i];
      dweight[size_t(slot)] = float(dot);
    }
  });
  std::vector<float> dx_perm(static_cast<size_t>(R * D));
  for_each_expert(disp, [&](int64_t e) {
    const int64_t off = disp.offset(e);
    swiglu_mlp_train_backward(s.x_perm.data() + off * D, disp.block(e), D, F, w.fc1_E[size_t(e)].f32(),
                              w.fc2_E[size_t(e)].f32(), s.experts[size_t(e)], dy_perm.data() + off * D,
                              dx_perm.data() + off * D, false, g.fc1_E[size_t(e)].f32(), g.fc2_E[size_t(e)].f32());
  });

  // Router: d(logits) from the weights and the auxiliary losses, then its linear layer.
  std::vector<float> dlogits(static_cast<size_t>(T * E));
  router_train_backward(o, s.logits_TE.data(), T, E, K, c.moe_router_pre_softmax, cu, s.router, dweight.data(),
                        aux_scale, dlogits.data());
  k::gemm_tn(E, D, T, dlogits.data(), x, g.router.f32(), true);
  k::gemm_nn(T, D, E, dlogits.data(), w.router.f32(), dx, false);
  for (int64_t row = 0; row < R; ++row) {
    const int64_t t = disp.token_of_row(row);
    if (t < 0) continue;
    float* d = dx + t * D;
    const float* src = dx_perm.data() + row * D;
    for (int64_t i = 0; i < D; ++i) d[i] += src[i];
  }

  if (has(w.shared_fc1)) {
    const int64_t Fs = w.shared_fc2.dim(1);
    std::vector<float> dshared(static_cast<size_t>(T * D));
    std::vector<float> dgate_logit(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
      const float gt = s.gate_T[size_t(t)];
      double dot = 0;
      for (int64_t i = 0; i < D; ++i) {
        dshared[size_t(t * D + i)] = gt * dy[t * D + i];
        dot += double(dy[t * D + i]) * s.shared_out_TD[size_t(t * D + i)];
      }
      dgate_logit[size_t(t)] = float(dot * gt * (1.0f - gt));
    }
    swiglu_mlp_train_backward(x, T, D, Fs, w.shared_fc1.f32(), w.shared_fc2.f32(), s.shared, dshared.data(), dx,
                              true, g.shared_fc1.f32(), g.shared_fc2.f32());
    if (has(w.shared_gate)) {
      k::gemm_tn(1, D, T, dgate_logit.data(), x, g.shared_gate.f32(), true);
      k::gemm_nn(T, D, 1, dgate_logit.data(), w.shared_gate.f32(), dx, true);
    }
  }
}

}  // namespace moe::model
