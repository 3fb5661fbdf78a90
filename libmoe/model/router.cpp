#include "model/router.h"

#include "kernels/ops.h"

namespace moe::model {

Routing route_topk(const Backend& b, const float* logits_TE, int64_t T, int64_t E, int64_t K, bool pre_softmax) {
  Routing r;
  r.T = T, r.K = K;
  r.expert_TK.resize(size_t(T * K)), r.weight_TK.resize(size_t(T * K));
  ops::RouterOptions o;
  o.E = E, o.K = K, o.pre_softmax = pre_softmax;
  ops::router_topk(b, o, logits_TE, T, nullptr, r.expert_TK.data(), r.weight_TK.data());
  return r;
}

}  // namespace moe::model
