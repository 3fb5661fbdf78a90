// TopKRouter results (Megatron-Core semantics, reference/megatron-format.md section 7): the
// experts each token chose and their combine weights. The maths are ops (kernels/ops.h).
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/backend.h"

namespace moe::model {

struct Routing {
  int64_t T = 0, K = 0;
  std::vector<int32_t> expert_TK;  // selected expert ids, best first (-1: dropped at capacity)
  std::vector<float> weight_TK;    // combine weights
};

// pre_softmax: softmax over all E, take top-k, no renormalisation (HF norm_topk_prob=false).
// otherwise:   top-k of the logits, softmax over those k (= renormalised top-k probabilities).
// Ties pick the lower expert id, as torch.topk does on CPU.
Routing route_topk(const Backend& b, const float* logits_TE, int64_t T, int64_t E, int64_t K, bool pre_softmax);

}  // namespace moe::model
