#include "model/moe_layer.h"

#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "kernels/cpu/linear.h"
#include "model/mlp.h"
#include "model/router.h"
#include "model/token_dispatcher.h"

namespace moe::model {

void grouped_experts_forward(const MoeWeights& w, const TokenDispatcher& disp, const float* x_perm, int64_t D,
                             float* y_perm) {
  // Experts run side by side, one thread each, balanced by their token counts: one barrier per
  // layer instead of two per expert, and whole-matrix GEMMs. With fewer active experts than
  // threads, each expert's GEMMs split their rows over the threads instead.
  std::vector<int64_t> cost(static_cast<size_t>(disp.num_experts()));
  int active = 0;
  for (int64_t e = 0; e < disp.num_experts(); ++e) active += (cost[size_t(e)] = disp.count(e)) > 0;
  auto run = [&](int64_t e) {
    thread_local std::vector<float> scratch;
    const int64_t off = disp.offset(e);
    swiglu_mlp(x_perm + off * D, disp.count(e), w.fc1_E[size_t(e)], w.fc2_E[size_t(e)], y_perm + off * D, false,
               scratch);
  };
  if (active >= num_threads()) {
    parallel_items(cost, run);
  } else {
    for (int64_t e = 0; e < disp.num_experts(); ++e)
      if (cost[size_t(e)] > 0) run(e);
  }
}

void moe_layer_forward(const ModelConfig& c, const MoeWeights& w, const float* x_TD, int64_t T, float* y_TD) {
  const int64_t D = c.hidden_size, E = c.num_experts, K = c.moe_router_topk;
  thread_local std::vector<float> logits, x_perm, y_perm;  // reused across calls
  logits.resize(size_t(T * E));
  kernels::cpu::linear(x_TD, T, w.router, nullptr, logits.data());
  Routing routing;
  if (w.expert_bias.defined() && w.expert_bias.numel() == E) {
    thread_local std::vector<float> probs;
    probs.resize(size_t(T * E));
    softmax_rows(logits.data(), T, E, probs.data(), nullptr);
    routing = route_topk_biased(logits.data(), probs.data(), T, E, K, c.moe_router_pre_softmax, w.expert_bias.f32());
  } else {
    routing = route_topk(logits.data(), T, E, K, c.moe_router_pre_softmax);
  }
  TokenDispatcher disp(routing, E);
  x_perm.resize(size_t(disp.rows() * D)), y_perm.resize(size_t(disp.rows() * D));
  disp.permute(x_TD, D, x_perm.data());
  grouped_experts_forward(w, disp, x_perm.data(), D, y_perm.data());
  std::fill(y_TD, y_TD + T * D, 0.0f);
  disp.unpermute_add(y_perm.data(), D, y_TD);

  if (w.shared_fc1.defined() && w.shared_fc1.numel() > 0) {
    std::vector<float> shared(size_t(T * D)), scratch;
    swiglu_mlp(x_TD, T, w.shared_fc1, w.shared_fc2, shared.data(), false, scratch);
    std::vector<float> gate(size_t(T), 1.0f);
    if (w.shared_gate.defined() && w.shared_gate.numel() > 0) {
      kernels::cpu::linear(x_TD, T, w.shared_gate, nullptr, gate.data());
      for (auto& g : gate) g = 1.0f / (1.0f + std::exp(-g));
    }
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < D; ++i) y_TD[t * D + i] += gate[size_t(t)] * shared[size_t(t * D + i)];
  }
}

}  // namespace moe::model
