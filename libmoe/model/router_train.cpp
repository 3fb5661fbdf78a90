#include "model/router_train.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace moe::model {

namespace {

// Megatron's capacity: ceil(tokens * topk / experts * factor).
int64_t expert_capacity(int64_t T, int64_t E, int64_t K, double factor) {
  return int64_t(std::ceil(double(T * K) / double(E) * factor));
}

// Keeps at most `cap` (token, slot) pairs per expert: the most probable ones, or the first
// ones in token order; the others get expert -1 and weight 0 (their tokens skip that expert).
void drop_over_capacity(Routing& r, int64_t E, int64_t cap, bool by_probs) {
  std::vector<std::vector<int64_t>> chosen(static_cast<size_t>(E));
  for (int64_t i = 0; i < r.T * r.K; ++i) chosen[size_t(r.expert_TK[size_t(i)])].push_back(i);
  for (auto& list : chosen) {
    if (int64_t(list.size()) <= cap) continue;
    if (by_probs)
      std::stable_sort(list.begin(), list.end(),
                       [&](int64_t a, int64_t b) { return r.weight_TK[size_t(a)] > r.weight_TK[size_t(b)]; });
    for (size_t j = size_t(cap); j < list.size(); ++j) {
      r.expert_TK[size_t(list[j])] = -1;
      r.weight_TK[size_t(list[j])] = 0.0f;
    }
  }
}

}  // namespace

void router_train_forward(const MoeTrainOptions& o, const float* logits, int64_t T, int64_t E, int64_t K,
                          bool pre_softmax, std::span<const int32_t> cu, const float* bias, RouterSaved& s) {
  s.probs_TE.resize(size_t(T * E));
  std::vector<double> lse(static_cast<size_t>(T));
  softmax_rows(logits, T, E, s.probs_TE.data(), lse.data());
  s.routing = bias ? route_topk_biased(logits, s.probs_TE.data(), T, E, K, pre_softmax, bias)
                  : route_topk(logits, T, E, K, pre_softmax);
  s.selected = s.routing;
  s.capacity = 0;
  if (o.capacity_factor > 0) {
    s.capacity = expert_capacity(T, E, K, o.capacity_factor);
    drop_over_capacity(s.routing, E, s.capacity, o.token_drop_policy != "position");
  }
  s.tokens_per_expert.assign(size_t(E), 0);
  for (int32_t e : s.routing.expert_TK)
    if (e >= 0) ++s.tokens_per_expert[size_t(e)];

  s.aux_loss = 0;
  if (o.aux_loss_coeff > 0 && o.load_balancing_type == "aux_loss") {
    // E / (K T²) · Σ_e load_e · Σ_t p_te  (Megatron's switch_load_balancing_loss_func)
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) {
      double pe = 0;
      for (int64_t t = 0; t < T; ++t) pe += s.probs_TE[size_t(t * E + e)];
      sum += pe * double(s.tokens_per_expert[size_t(e)]);
    }
    s.aux_loss = o.aux_loss_coeff * sum * double(E) / (double(K) * double(T) * double(T));
  } else if (o.aux_loss_coeff > 0 && o.load_balancing_type == "seq_aux_loss") {
    // Mean over sequences of Σ_e (load_e E / (L K)) · mean_t p_te.
    const int64_t S = int64_t(cu.size()) - 1;
    double total = 0;
    for (int64_t q = 0; q < S; ++q) {
      const int64_t t0 = cu[size_t(q)], t1 = cu[size_t(q) + 1], L = t1 - t0;
      if (L == 0) continue;
      std::vector<double> load(static_cast<size_t>(E), 0), pe(static_cast<size_t>(E), 0);
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t k = 0; k < K; ++k)
          if (int32_t e = s.routing.expert_TK[size_t(t * K + k)]; e >= 0) load[size_t(e)] += 1;
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t e = 0; e < E; ++e) pe[size_t(e)] += s.probs_TE[size_t(t * E + e)];
      for (int64_t e = 0; e < E; ++e)
        total += load[size_t(e)] * double(E) / double(L * K) * pe[size_t(e)] / double(L);
    }
    s.aux_loss = o.aux_loss_coeff * total / double(std::max<int64_t>(S, 1));
  }
  s.z_loss = 0;
  if (o.z_loss_coeff > 0) {
    double z = 0;
    for (double v : lse) z += v * v;
    s.z_loss = o.z_loss_coeff * z / double(T);
  }
}

void router_train_backward(const MoeTrainOptions& o, const float* logits, int64_t T, int64_t E, int64_t K,
                           bool pre_softmax, std::span<const int32_t> cu, const RouterSaved& s, const float* dw,
                           float loss_scale, float* dl) {
  // dp: the gradient with respect to the full softmax probabilities, then one softmax backward.
  std::vector<double> dp(static_cast<size_t>(T * E), 0.0);
  if (o.aux_loss_coeff > 0 && o.load_balancing_type == "aux_loss") {
    const double c = loss_scale * o.aux_loss_coeff * double(E) / (double(K) * double(T) * double(T));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e) dp[size_t(t * E + e)] += c * double(s.tokens_per_expert[size_t(e)]);
  } else if (o.aux_loss_coeff > 0 && o.load_balancing_type == "seq_aux_loss") {
    const int64_t S = int64_t(cu.size()) - 1;
    for (int64_t q = 0; q < S; ++q) {
      const int64_t t0 = cu[size_t(q)], t1 = cu[size_t(q) + 1], L = t1 - t0;
      if (L == 0) continue;
      std::vector<double> load(static_cast<size_t>(E), 0);
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t k = 0; k < K; ++k)
          if (int32_t e = s.routing.expert_TK[size_t(t * K + k)]; e >= 0) load[size_t(e)] += 1;
      const double c = loss_scale * o.aux_loss_coeff / double(S) * double(E) / double(L * K) / double(L);
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t e = 0; e < E; ++e) dp[size_t(t * E + e)] += c * load[size_t(e)];
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    const float* p = s.probs_TE.data() + t * E;
    float* g = dl + t * E;
    const int32_t* sel = s.selected.expert_TK.data() + t * K;
    const int32_t* kept = s.routing.expert_TK.data() + t * K;
    const float* wt = s.selected.weight_TK.data() + t * K;
    const float* dwt = dw + t * K;
    if (pre_softmax)  // weight_k = p[e_k]; a dropped slot's weight is a constant 0
      for (int64_t k = 0; k < K; ++k)
        if (kept[k] >= 0) dp[size_t(t * E + sel[k])] += dwt[k];
    double dot = 0;
    for (int64_t e = 0; e < E; ++e) dot += dp[size_t(t * E + e)] * p[e];
    for (int64_t e = 0; e < E; ++e) g[e] = float(p[e] * (dp[size_t(t * E + e)] - dot));
    if (!pre_softmax) {  // weights = softmax over the selected logits, then dropped ones masked
      double wdot = 0;
      for (int64_t k = 0; k < K; ++k)
        if (kept[k] >= 0) wdot += double(wt[k]) * dwt[k];
      for (int64_t k = 0; k < K; ++k) g[sel[k]] += float(wt[k] * ((kept[k] >= 0 ? dwt[k] : 0.0f) - wdot));
    }
    if (o.z_loss_coeff > 0) {  // d/dl of coeff · mean_t lse² = coeff · 2 lse p / T
      double m = *std::max_element(logits + t * E, logits + t * E + E), sum = 0;
      for (int64_t e = 0; e < E; ++e) sum += std::exp(double(logits[t * E + e]) - m);
      const double lse = m + std::log(sum);
      const double c = loss_scale * o.z_loss_coeff * 2.0 * lse / double(T);
      for (int64_t e = 0; e < E; ++e) g[e] += float(c * p[e]);
    }
  }
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
