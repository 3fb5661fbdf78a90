#include "kernels/cpu/router.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"

namespace moe::kernels::cpu {

namespace {

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// The k best of `score` (length E) into order[0..k), ties to the lower id.
void top_k(const float* score, int64_t E, int64_t K, std::vector<int32_t>& order) {
  order.resize(size_t(E));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + K, order.end(),
                    [&](int32_t a, int32_t b) { return score[a] > score[b] || (score[a] == score[b] && a < b); });
}

void softmax_row(const float* l, int64_t E, float* p, double* lse) {
  const float m = *std::max_element(l, l + E);
  double s = 0;
  for (int64_t e = 0; e < E; ++e) s += std::exp(double(l[e] - m));
  for (int64_t e = 0; e < E; ++e) p[e] = float(std::exp(double(l[e] - m)) / s);
  if (lse) *lse = double(m) + std::log(s);
}

double lse_row(const float* l, int64_t E) {
  const double m = *std::max_element(l, l + E);
  double sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += std::exp(double(l[e]) - m);
  return m + std::log(sum);
}

}  // namespace

int64_t router_capacity(int64_t T, int64_t E, int64_t K, double factor) {
  return int64_t(std::ceil(double(T * K) / double(E) * factor));
}

void router_softmax(const float* logits_TE, int64_t T, int64_t E, float* probs_TE, double* lse_T) {
  for (int64_t t = 0; t < T; ++t) softmax_row(logits_TE + t * E, E, probs_TE + t * E, lse_T ? lse_T + t : nullptr);
}

void router_sigmoid_norm(const float* logits_TE, int64_t T, int64_t E, float* probs_TE) {
  for (int64_t t = 0; t < T; ++t) {
    const float* l = logits_TE + t * E;
    double s = 0;
    for (int64_t e = 0; e < E; ++e) s += sigmoid(l[e]);
    for (int64_t e = 0; e < E; ++e) probs_TE[t * E + e] = float(double(sigmoid(l[e])) / (s + 1e-20));
  }
}

void router_topk(const RouterOptions& o, const float* logits_TE, int64_t T, const float* bias, int32_t* expert_TK,
                 float* weight_TK) {
  const int64_t E = o.E, K = o.K;
  MOE_ASSERT(K >= 1 && K <= E, "top-{} of {} experts", K, E);
  std::vector<int32_t> order;
  std::vector<float> score(static_cast<size_t>(E)), p(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    const float* l = logits_TE + t * E;
    int32_t* ex = expert_TK + t * K;
    float* wt = weight_TK + t * K;
    if (o.score == RouterScore::Sigmoid) {
      for (int64_t e = 0; e < E; ++e)
        p[size_t(e)] = sigmoid(l[e]), score[size_t(e)] = p[size_t(e)] + (bias ? bias[e] : 0.0f);
      top_k(score.data(), E, K, order);
      double z = 0;
      for (int64_t k = 0; k < K; ++k) z += p[size_t(order[size_t(k)])];
      for (int64_t k = 0; k < K; ++k) {
        ex[k] = order[size_t(k)];
        wt[k] = K > 1 ? float(double(p[size_t(ex[k])]) / (z + 1e-20)) : p[size_t(ex[k])];
      }
      continue;
    }
    if (bias) {
      // Selection by score + bias; the weights stay those of the unbiased scores.
      if (o.pre_softmax) softmax_row(l, E, p.data(), nullptr);
      const float* s = o.pre_softmax ? p.data() : l;
      for (int64_t e = 0; e < E; ++e) score[size_t(e)] = s[e] + bias[e];
      top_k(score.data(), E, K, order);
      double z = 0;
      for (int64_t k = 0; k < K; ++k) z += std::exp(double(l[order[size_t(k)]]));
      for (int64_t k = 0; k < K; ++k) {
        ex[k] = order[size_t(k)];
        wt[k] = o.pre_softmax ? p[size_t(ex[k])] : float(std::exp(double(l[ex[k]])) / z);
      }
      continue;
    }
    top_k(l, E, K, order);
    const float m = l[order[0]];
    double s = 0;
    if (o.pre_softmax) {
      for (int64_t e = 0; e < E; ++e) s += (p[size_t(e)] = std::exp(l[e] - m));
      for (int64_t k = 0; k < K; ++k) wt[k] = float(p[size_t(order[size_t(k)])] / s);
    } else {
      for (int64_t k = 0; k < K; ++k) s += (p[size_t(k)] = std::exp(l[order[size_t(k)]] - m));
      for (int64_t k = 0; k < K; ++k) wt[k] = float(p[size_t(k)] / s);
    }
    for (int64_t k = 0; k < K; ++k) ex[k] = order[size_t(k)];
  }
}

void router_drop_over_capacity(int32_t* expert_TK, float* weight_TK, int64_t T, int64_t K, int64_t E, int64_t capacity,
                               bool by_probs) {
  std::vector<std::vector<int64_t>> chosen(static_cast<size_t>(E));
  for (int64_t i = 0; i < T * K; ++i) {
    MOE_ASSERT(expert_TK[i] >= 0 && expert_TK[i] < E, "router chose expert {} of {}", expert_TK[i], E);
    chosen[size_t(expert_TK[i])].push_back(i);
  }
  for (auto& list : chosen) {
    if (int64_t(list.size()) <= capacity) continue;
    if (by_probs)
      std::stable_sort(list.begin(), list.end(), [&](int64_t a, int64_t b) { return weight_TK[a] > weight_TK[b]; });
    for (size_t j = size_t(capacity); j < list.size(); ++j) expert_TK[list[j]] = -1, weight_TK[list[j]] = 0.0f;
  }
}

void router_tokens_per_expert(const int32_t* expert_TK, int64_t T, int64_t K, int64_t E, int64_t* counts_E) {
  std::fill(counts_E, counts_E + E, int64_t(0));
  for (int64_t i = 0; i < T * K; ++i)
    if (expert_TK[i] >= 0) ++counts_E[expert_TK[i]];
}

double router_aux_loss(const float* probs_TE, const int64_t* load_E, int64_t T, int64_t N, int64_t E, int64_t K,
                       double coeff) {
  double sum = 0;
  for (int64_t e = 0; e < E; ++e) {
    double pe = 0;
    for (int64_t t = 0; t < T; ++t) pe += probs_TE[t * E + e];
    sum += pe * double(load_E[e]);
  }
  return coeff * sum * double(E) / (double(K) * double(N) * double(N));
}

void router_aux_loss_backward(const int64_t* load_E, int64_t T, int64_t N, int64_t E, int64_t K, double coeff,
                              double scale, double* dprobs_TE) {
  const double c = scale * coeff * double(E) / (double(K) * double(N) * double(N));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) dprobs_TE[t * E + e] += c * double(load_E[e]);
}

namespace {
// Sequence q's part of the rows [row_begin, row_begin + T), as row indices local to them.
std::pair<int64_t, int64_t> seq_rows(const int32_t* cu, int64_t q, int64_t row_begin, int64_t T) {
  const int64_t t0 = std::clamp<int64_t>(cu[q] - row_begin, 0, T),
                t1 = std::clamp<int64_t>(cu[q + 1] - row_begin, 0, T);
  return {t0, std::max(t0, t1)};
}
}  // namespace

void router_seq_loads(const int32_t* expert_TK, int64_t T, int64_t K, int64_t E, const int32_t* cu, int64_t S,
                      int64_t row_begin, double* seq_load_SE) {
  std::fill(seq_load_SE, seq_load_SE + S * E, 0.0);
  for (int64_t q = 0; q < S; ++q) {
    const auto [t0, t1] = seq_rows(cu, q, row_begin, T);
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t k = 0; k < K; ++k)
        if (int32_t e = expert_TK[t * K + k]; e >= 0) seq_load_SE[q * E + e] += 1;
  }
}

double router_seq_aux_loss(const float* probs_TE, const double* seq_load_SE, const int32_t* cu, int64_t S,
                           int64_t row_begin, int64_t T, int64_t E, int64_t K, double coeff) {
  double total = 0;
  std::vector<double> pe(static_cast<size_t>(E));
  for (int64_t q = 0; q < S; ++q) {
    const int64_t L = cu[q + 1] - cu[q];
    const auto [t0, t1] = seq_rows(cu, q, row_begin, T);
    if (t1 == t0) continue;
    std::fill(pe.begin(), pe.end(), 0.0);
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t e = 0; e < E; ++e) pe[size_t(e)] += probs_TE[t * E + e];
    const double* load = seq_load_SE + q * E;
    for (int64_t e = 0; e < E; ++e) total += load[e] * double(E) / double(L * K) * pe[size_t(e)] / double(L);
  }
  return coeff * total / double(std::max<int64_t>(S, 1));
}

void router_seq_aux_loss_backward(const double* seq_load_SE, const int32_t* cu, int64_t S, int64_t row_begin, int64_t T,
                                  int64_t E, int64_t K, double coeff, double scale, double* dprobs_TE) {
  for (int64_t q = 0; q < S; ++q) {
    const int64_t L = cu[q + 1] - cu[q];
    const auto [t0, t1] = seq_rows(cu, q, row_begin, T);
    if (t1 == t0) continue;
    const double c = scale * coeff / double(S) * double(E) / double(L * K) / double(L);
    const double* load = seq_load_SE + q * E;
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t e = 0; e < E; ++e) dprobs_TE[t * E + e] += c * load[e];
  }
}

double router_z_loss(const double* lse_T, int64_t T, int64_t N, double coeff) {
  double z = 0;
  for (int64_t t = 0; t < T; ++t) z += lse_T[t] * lse_T[t];
  return coeff * z / double(N);
}

void router_z_loss_backward(const float* logits_TE, int64_t T, int64_t N, int64_t E, double coeff, double scale,
                            float* dlogits_TE) {
  for (int64_t t = 0; t < T; ++t) {
    const float* l = logits_TE + t * E;
    const double lse = lse_row(l, E);
    const double c = scale * coeff * 2.0 * lse / double(N);
    for (int64_t e = 0; e < E; ++e) dlogits_TE[t * E + e] += float(c * std::exp(double(l[e]) - lse));
  }
}

double router_route(const RouterOptions& o, const float* logits, int64_t T, const float* bias, float* probs_TE,
                    int32_t* selected_TK, float* selected_weight_TK, int32_t* expert_TK, float* weight_TK,
                    int64_t* load_E) {
  const int64_t E = o.E, K = o.K;
  std::vector<double> lse(static_cast<size_t>(T));
  if (o.score == RouterScore::Softmax) {
    router_softmax(logits, T, E, probs_TE, lse.data());
  } else {
    router_sigmoid_norm(logits, T, E, probs_TE);
    if (o.z_loss_coeff > 0)
      for (int64_t t = 0; t < T; ++t) {
        const float* l = logits + t * E;
        const float m = *std::max_element(l, l + E);
        double s = 0;
        for (int64_t e = 0; e < E; ++e) s += std::exp(double(l[e] - m));
        lse[size_t(t)] = double(m) + std::log(s);
      }
  }
  router_topk(o, logits, T, bias, selected_TK, selected_weight_TK);
  std::copy(selected_TK, selected_TK + T * K, expert_TK);
  std::copy(selected_weight_TK, selected_weight_TK + T * K, weight_TK);
  if (o.capacity > 0) router_drop_over_capacity(expert_TK, weight_TK, T, K, E, o.capacity, o.drop_by_probs);
  router_tokens_per_expert(expert_TK, T, K, E, load_E);
  return o.z_loss_coeff > 0 ? router_z_loss(lse.data(), T, o.tokens(T), o.z_loss_coeff) : 0.0;
}

double router_balancing_loss(const RouterOptions& o, const float* probs_TE, int64_t T, const int32_t* cu, int64_t S,
                             const int64_t* load_E, const double* seq_load_SE) {
  if (!(o.aux_loss_coeff > 0)) return 0.0;
  if (o.balancing == LoadBalancing::AuxLoss)
    return router_aux_loss(probs_TE, load_E, T, o.tokens(T), o.E, o.K, o.aux_loss_coeff);
  if (o.balancing == LoadBalancing::SeqAuxLoss)
    return router_seq_aux_loss(probs_TE, seq_load_SE, cu, S, o.row_begin, T, o.E, o.K, o.aux_loss_coeff);
  return 0.0;
}

RouterLosses router_forward(const RouterOptions& o, const float* logits, int64_t T, const float* bias,
                            const int32_t* cu, int64_t S, float* probs_TE, int32_t* selected_TK,
                            float* selected_weight_TK, int32_t* expert_TK, float* weight_TK, int64_t* load_E) {
  RouterLosses r;
  r.z_loss = router_route(o, logits, T, bias, probs_TE, selected_TK, selected_weight_TK, expert_TK, weight_TK, load_E);
  std::vector<double> seq_load;
  if (o.balancing == LoadBalancing::SeqAuxLoss) {
    seq_load.resize(size_t(S * o.E));
    router_seq_loads(expert_TK, T, o.K, o.E, cu, S, o.row_begin, seq_load.data());
  }
  r.aux_loss = router_balancing_loss(o, probs_TE, T, cu, S, load_E, seq_load.data());
  return r;
}

void router_backward(const RouterOptions& o, const float* logits, int64_t T, const int32_t* cu, int64_t S,
                     const float* probs_TE, const int32_t* selected_TK, const float* selected_weight_TK,
                     const int32_t* expert_TK, const int64_t* load_E, const double* seq_load_SE,
                     const float* dweight_TK, float loss_scale, float* dl) {
  const int64_t E = o.E, K = o.K;
  // dp: the gradient with respect to the losses' probabilities, then one backward through the
  // score function, with the combine weights' gradient joined on the way.
  std::vector<double> dp(static_cast<size_t>(T * E), 0.0);
  if (o.aux_loss_coeff > 0 && o.balancing == LoadBalancing::AuxLoss)
    router_aux_loss_backward(load_E, T, o.tokens(T), E, K, o.aux_loss_coeff, loss_scale, dp.data());
  else if (o.aux_loss_coeff > 0 && o.balancing == LoadBalancing::SeqAuxLoss)
    router_seq_aux_loss_backward(seq_load_SE, cu, S, o.row_begin, T, E, K, o.aux_loss_coeff, loss_scale, dp.data());
  std::vector<double> ds(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    const float* l = logits + t * E;
    const float* p = probs_TE + t * E;
    double* dpt = dp.data() + t * E;
    float* g = dl + t * E;
    const int32_t* sel = selected_TK + t * K;
    const int32_t* kept = expert_TK + t * K;
    const float* wt = selected_weight_TK + t * K;
    const float* dwt = dweight_TK + t * K;
    if (o.score == RouterScore::Softmax) {
      if (o.pre_softmax)  // weight_k = p[e_k]; a dropped slot's weight is a constant 0
        for (int64_t k = 0; k < K; ++k)
          if (kept[k] >= 0) dpt[sel[k]] += dwt[k];
      double dot = 0;
      for (int64_t e = 0; e < E; ++e) dot += dpt[e] * p[e];
      for (int64_t e = 0; e < E; ++e) g[e] = float(p[e] * (dpt[e] - dot));
      if (!o.pre_softmax) {  // weights = softmax over the selected logits, then dropped ones masked
        double wdot = 0;
        for (int64_t k = 0; k < K; ++k)
          if (kept[k] >= 0) wdot += double(wt[k]) * dwt[k];
        for (int64_t k = 0; k < K; ++k) g[sel[k]] += float(wt[k] * ((kept[k] >= 0 ? dwt[k] : 0.0f) - wdot));
      }
    } else {
      // p = s / (sum s + 1e-20) over all experts; weights = s_k / (sum_k s + 1e-20) when K > 1.
      double ssum = 0;
      for (int64_t e = 0; e < E; ++e) ssum += sigmoid(l[e]);
      const double zs = ssum + 1e-20;
      double dot = 0;
      for (int64_t e = 0; e < E; ++e) dot += dpt[e] * double(sigmoid(l[e]));
      for (int64_t e = 0; e < E; ++e) ds[size_t(e)] = dpt[e] / zs - dot / (zs * zs);
      if (K > 1) {
        double z = 0, wdot = 0;
        for (int64_t k = 0; k < K; ++k) z += sigmoid(l[sel[k]]);
        z += 1e-20;
        for (int64_t k = 0; k < K; ++k)
          if (kept[k] >= 0) wdot += double(dwt[k]) * double(sigmoid(l[sel[k]]));
        for (int64_t k = 0; k < K; ++k) ds[size_t(sel[k])] += (kept[k] >= 0 ? dwt[k] : 0.0) / z - wdot / (z * z);
      } else if (kept[0] >= 0) {
        ds[size_t(sel[0])] += dwt[0];
      }
      for (int64_t e = 0; e < E; ++e) {
        const double s = sigmoid(l[e]);
        g[e] = float(ds[size_t(e)] * s * (1.0 - s));
      }
    }
    if (o.z_loss_coeff > 0) {  // d/dl of coeff · mean_t lse² = coeff · 2 lse softmax / T
      const double lse = lse_row(l, E);
      const double c = loss_scale * o.z_loss_coeff * 2.0 * lse / double(o.tokens(T));
      if (o.score == RouterScore::Softmax)
        for (int64_t e = 0; e < E; ++e) g[e] += float(c * p[e]);
      else
        for (int64_t e = 0; e < E; ++e) g[e] += float(c * std::exp(double(l[e]) - lse));
    }
  }
}

}  // namespace moe::kernels::cpu
