#include "model/router_train.h"

#include <numeric>

#include "core/error.h"

#include "kernels/ops.h"

namespace moe::model {

namespace {

ops::RouterOptions router_options(const MoeTrainOptions& o, int64_t T, int64_t E, int64_t K, bool pre_softmax) {
  ops::RouterOptions r;
  r.E = E, r.K = K, r.pre_softmax = pre_softmax;
  r.capacity = router_capacity(o, T, E, K);
  r.drop_by_probs = o.token_drop_policy != "position";
  using LB = ops::LoadBalancing;
  r.balancing = o.load_balancing_type == "aux_loss"       ? LB::AuxLoss
                : o.load_balancing_type == "seq_aux_loss" ? LB::SeqAuxLoss
                                                          : LB::None;
  r.aux_loss_coeff = o.aux_loss_coeff, r.z_loss_coeff = o.z_loss_coeff;
  return r;
}

// A split's losses as the kernels compute them over this rank's T tokens: the z-loss's mean and
// the switch loss's squared normalisation are over the whole micro-batch's tokens instead.
ops::RouterOptions split_options(ops::RouterOptions r, int64_t T, const RouterSplit* split) {
  if (!split) return r;
  MOE_ASSERT(r.balancing != ops::LoadBalancing::SeqAuxLoss || r.aux_loss_coeff <= 0,
             "seq_aux_loss over a micro-batch split over ranks");
  const double share = double(T) / double(std::max<int64_t>(split->tokens, 1));
  r.z_loss_coeff *= share, r.aux_loss_coeff *= share * share;
  return r;
}

}  // namespace

RouterSaved carve_router_saved(Arena& keep, int64_t T, int64_t E, int64_t K) {
  RouterSaved s;
  s.probs_TE = keep.take<float>(size_t(T * E));
  s.selected_TK = keep.take<int32_t>(size_t(T * K));
  s.selected_weight_TK = keep.take<float>(size_t(T * K));
  s.expert_TK = keep.take<int32_t>(size_t(T * K));
  s.weight_TK = keep.take<float>(size_t(T * K));
  s.tokens_per_expert = keep.take<int64_t>(size_t(E));
  return s;
}

int64_t router_capacity(const MoeTrainOptions& o, int64_t T, int64_t E, int64_t K) {
  return o.capacity_factor > 0 ? ops::router_capacity(T, E, K, o.capacity_factor) : 0;
}

void router_train_forward(const Backend& b, const MoeTrainOptions& o, const float* logits, int64_t T, int64_t E,
                          int64_t K, bool pre_softmax, std::span<const int32_t> cu, const float* bias, Arena& keep,
                          RouterSaved& s, const RouterSplit* split) {
  const ops::RouterOptions ro = split_options(router_options(o, T, E, K, pre_softmax), T, split);
  s = carve_router_saved(keep, T, E, K);
  // Split: the switch loss needs the whole micro-batch's loads, known only after this routing.
  ops::RouterOptions route = ro;
  if (split) route.aux_loss_coeff = 0;
  const auto losses = ops::router_forward(b, route, logits, T, bias, cu.data(), int64_t(cu.size()) - 1,
                                          s.probs_TE.data(), s.selected_TK.data(), s.selected_weight_TK.data(),
                                          s.expert_TK.data(), s.weight_TK.data(), s.tokens_per_expert.data());
  s.capacity = ro.capacity;
  s.aux_loss = losses.aux_loss, s.z_loss = losses.z_loss;
  if (!split) return;
  split->sum(s.tokens_per_expert);
  if (ro.balancing == ops::LoadBalancing::AuxLoss && ro.aux_loss_coeff > 0)
    s.aux_loss = ops::router_aux_loss(b, s.probs_TE.data(), s.tokens_per_expert.data(), T, E, K, ro.aux_loss_coeff);
}

void router_train_backward(const Backend& b, const MoeTrainOptions& o, const float* logits, int64_t T, int64_t E,
                           int64_t K, bool pre_softmax, std::span<const int32_t> cu, const RouterSaved& s,
                           const float* dw, float loss_scale, float* dl, const RouterSplit* split) {
  // Under a split the saved loads are the whole micro-batch's: the switch loss's gradient.
  const ops::RouterOptions ro = split_options(router_options(o, T, E, K, pre_softmax), T, split);
  ops::router_backward(b, ro, logits, T, cu.data(), int64_t(cu.size()) - 1, s.probs_TE.data(), s.selected_TK.data(),
                       s.selected_weight_TK.data(), s.expert_TK.data(), s.tokens_per_expert.data(), dw, loss_scale, dl);
}

void update_expert_bias(float* bias, std::span<const int64_t> load, double rate) {
  if (load.empty()) return;
  const double mean = double(std::accumulate(load.begin(), load.end(), int64_t(0))) / double(load.size());
  for (size_t e = 0; e < load.size(); ++e) {
    const double diff = mean - double(load[e]);
    bias[e] += float(rate * double((diff > 0) - (diff < 0)));
  }
}

}  // namespace moe::model
