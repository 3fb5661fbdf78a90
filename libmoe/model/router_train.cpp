#include "model/router_train.h"

#include <numeric>

#include "core/error.h"
#include "kernels/ops.h"

namespace moe::model {

namespace {

ops::RouterOptions router_options(const MoeTrainOptions& o, int64_t T, int64_t E, int64_t K, bool pre_softmax,
                                  const RouterRows& rows) {
  ops::RouterOptions r;
  r.E = E, r.K = K, r.pre_softmax = pre_softmax;
  if (rows.group) r.row_begin = rows.begin, r.total_tokens = rows.tokens;
  r.capacity = router_capacity(o, T, E, K);
  r.drop_by_probs = o.token_drop_policy != "position";
  using LB = ops::LoadBalancing;
  r.balancing = o.load_balancing_type == "aux_loss"       ? LB::AuxLoss
                : o.load_balancing_type == "seq_aux_loss" ? LB::SeqAuxLoss
                                                          : LB::None;
  r.aux_loss_coeff = o.aux_loss_coeff, r.z_loss_coeff = o.z_loss_coeff;
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
                          int64_t K, bool pre_softmax, std::span<const int32_t> cu, const float* bias,
                          const RouterRows& rows, Arena& keep, RouterSaved& s) {
  const ops::RouterOptions ro = router_options(o, T, E, K, pre_softmax, rows);
  s = carve_router_saved(keep, T, E, K);
  const int64_t S = int64_t(cu.size()) - 1;
  s.z_loss =
      ops::router_route(b, ro, logits, T, bias, s.probs_TE.data(), s.selected_TK.data(), s.selected_weight_TK.data(),
                        s.expert_TK.data(), s.weight_TK.data(), s.tokens_per_expert.data());
  const bool per_seq = ro.balancing == ops::LoadBalancing::SeqAuxLoss && ro.aux_loss_coeff > 0;
  if (per_seq) {
    s.seq_load_SE.resize(size_t(S * E));
    ops::router_seq_loads(b, s.expert_TK.data(), T, K, E, cu.data(), S, ro.row_begin, s.seq_load_SE.data());
  }
  if (rows.group) {  // the whole micro-batch's loads, in one reduction (counts are exact in doubles)
    std::vector<double> loads(s.tokens_per_expert.begin(), s.tokens_per_expert.end());
    loads.insert(loads.end(), s.seq_load_SE.begin(), s.seq_load_SE.end());
    rows.group->all_reduce(loads.data(), int64_t(loads.size()), dist::DataType::kF64, dist::ReduceOp::kSum);
    for (size_t e = 0; e < size_t(E); ++e) s.tokens_per_expert[e] = int64_t(loads[e]);
    std::copy(loads.begin() + E, loads.end(), s.seq_load_SE.begin());
  }
  s.aux_loss = ops::router_balancing_loss(b, ro, s.probs_TE.data(), T, cu.data(), S, s.tokens_per_expert.data(),
                                          s.seq_load_SE.data());
  s.capacity = ro.capacity;
  if (rows.group && !rows.keep_shares) {  // each rank's share of the losses, summed: the whole micro-batch's
    double losses[2] = {s.aux_loss, s.z_loss};
    rows.group->all_reduce(losses, 2, dist::DataType::kF64, dist::ReduceOp::kSum);
    s.aux_loss = losses[0], s.z_loss = losses[1];
  }
}

void router_infer_topk(const Backend& b, const MoeTrainOptions& o, const float* logits, int64_t T, int64_t E, int64_t K,
                       bool pre_softmax, const float* bias, Arena& keep, RouterSaved& s) {
  const ops::RouterOptions ro = router_options(o, T, E, K, pre_softmax, RouterRows{});
  MOE_ASSERT(ro.capacity == 0, "router_infer_topk is dropless");
  s = carve_router_saved(keep, T, E, K);
  ops::router_topk(b, ro, logits, T, bias, s.expert_TK.data(), s.weight_TK.data());
}

void router_train_backward(const Backend& b, const MoeTrainOptions& o, const float* logits, int64_t T, int64_t E,
                           int64_t K, bool pre_softmax, std::span<const int32_t> cu, const RouterRows& rows,
                           const RouterSaved& s, const float* dw, float loss_scale, float* dl) {
  const ops::RouterOptions ro = router_options(o, T, E, K, pre_softmax, rows);
  ops::router_backward(b, ro, logits, T, cu.data(), int64_t(cu.size()) - 1, s.probs_TE.data(), s.selected_TK.data(),
                       s.selected_weight_TK.data(), s.expert_TK.data(), s.tokens_per_expert.data(),
                       s.seq_load_SE.data(), dw, loss_scale, dl);
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
