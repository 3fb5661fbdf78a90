#include "model/router_train.h"

#include <numeric>

#include "kernels/ops.h"

namespace moe::model {

namespace {

ops::RouterOptions router_options(const MoeTrainOptions& o, int64_t T, int64_t E, int64_t K, bool pre_softmax) {
  ops::RouterOptions r;
  r.E = E, r.K = K, r.pre_softmax = pre_softmax;
  r.capacity = o.capacity_factor > 0 ? ops::router_capacity(T, E, K, o.capacity_factor) : 0;
  r.drop_by_probs = o.token_drop_policy != "position";
  using LB = ops::LoadBalancing;
  r.balancing = o.load_balancing_type == "aux_loss"       ? LB::AuxLoss
                : o.load_balancing_type == "seq_aux_loss" ? LB::SeqAuxLoss
                                                          : LB::None;
  r.aux_loss_coeff = o.aux_loss_coeff, r.z_loss_coeff = o.z_loss_coeff;
  return r;
}

}  // namespace

void router_train_forward(const Backend& b, const MoeTrainOptions& o, const float* logits, int64_t T, int64_t E,
                          int64_t K, bool pre_softmax, std::span<const int32_t> cu, const float* bias, RouterSaved& s) {
  const ops::RouterOptions ro = router_options(o, T, E, K, pre_softmax);
  s.probs_TE.resize(size_t(T * E));
  for (Routing* r : {&s.selected, &s.routing}) {
    r->T = T, r->K = K;
    r->expert_TK.resize(size_t(T * K)), r->weight_TK.resize(size_t(T * K));
  }
  s.tokens_per_expert.resize(size_t(E));
  const auto losses = ops::router_forward(
      b, ro, logits, T, bias, cu.data(), int64_t(cu.size()) - 1, s.probs_TE.data(), s.selected.expert_TK.data(),
      s.selected.weight_TK.data(), s.routing.expert_TK.data(), s.routing.weight_TK.data(), s.tokens_per_expert.data());
  s.capacity = ro.capacity;
  s.aux_loss = losses.aux_loss, s.z_loss = losses.z_loss;
}

void router_train_backward(const Backend& b, const MoeTrainOptions& o, const float* logits, int64_t T, int64_t E,
                           int64_t K, bool pre_softmax, std::span<const int32_t> cu, const RouterSaved& s,
                           const float* dw, float loss_scale, float* dl) {
  const ops::RouterOptions ro = router_options(o, T, E, K, pre_softmax);
  ops::router_backward(b, ro, logits, T, cu.data(), int64_t(cu.size()) - 1, s.probs_TE.data(),
                       s.selected.expert_TK.data(), s.selected.weight_TK.data(), s.routing.expert_TK.data(),
                       s.tokens_per_expert.data(), dw, loss_scale, dl);
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
