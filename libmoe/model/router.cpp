#include "model/router.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace moe::model {

Routing route_topk(const float* logits_TE, int64_t T, int64_t E, int64_t K, bool pre_softmax) {
  Routing r;
  r.T = T, r.K = K;
  r.expert_TK.resize(size_t(T * K));
  r.weight_TK.resize(size_t(T * K));
  std::vector<int32_t> order(static_cast<size_t>(E));
  std::vector<float> p(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    const float* l = logits_TE + t * E;
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + K, order.end(),
                      [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
    float m = l[order[0]];
    if (pre_softmax) {
      double s = 0;
      for (int64_t e = 0; e < E; ++e) s += (p[size_t(e)] = std::exp(l[e] - m));
      for (int64_t k = 0; k < K; ++k) r.weight_TK[size_t(t * K + k)] = float(p[size_t(order[size_t(k)])] / s);
    } else {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += (p[size_t(k)] = std::exp(l[order[size_t(k)]] - m));
      for (int64_t k = 0; k < K; ++k) r.weight_TK[size_t(t * K + k)] = float(p[size_t(k)] / s);
    }
    for (int64_t k = 0; k < K; ++k) r.expert_TK[size_t(t * K + k)] = order[size_t(k)];
  }
  return r;
}

void softmax_rows(const float* x, int64_t T, int64_t E, float* p, double* lse_T) {
  for (int64_t t = 0; t < T; ++t) {
    const float* l = x + t * E;
    const float m = *std::max_element(l, l + E);
    double s = 0;
    for (int64_t e = 0; e < E; ++e) s += std::exp(double(l[e] - m));
    for (int64_t e = 0; e < E; ++e) p[t * E + e] = float(std::exp(double(l[e] - m)) / s);
    if (lse_T) lse_T[t] = double(m) + std::log(s);
  }
}

Routing route_topk_biased(const float* logits, const float* probs, int64_t T, int64_t E, int64_t K, bool pre_softmax,
                          const float* bias) {
  std::vector<float> biased(static_cast<size_t>(T * E));
  const float* score = pre_softmax ? probs : logits;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) biased[size_t(t * E + e)] = score[t * E + e] + bias[e];
  Routing r = route_topk(biased.data(), T, E, K, true);
  for (int64_t t = 0; t < T; ++t) {
    double z = 0;
    for (int64_t k = 0; k < K; ++k) z += std::exp(double(logits[t * E + r.expert_TK[size_t(t * K + k)]]));
    for (int64_t k = 0; k < K; ++k) {
      const int32_t e = r.expert_TK[size_t(t * K + k)];
      r.weight_TK[size_t(t * K + k)] = pre_softmax ? probs[t * E + e] : float(std::exp(double(logits[t * E + e])) / z);
    }
  }
  return r;
}

}  // namespace moe::model
