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

}  // namespace moe::model
