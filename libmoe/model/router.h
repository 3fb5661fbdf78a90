// TopKRouter maths (Megatron-Core semantics, reference/megatron-format.md section 7): pure
// functions from router logits to the selected experts and their weights; no communication.
#pragma once
#include <cstdint>
#include <vector>

namespace moe::model {

struct Routing {
  int64_t T = 0, K = 0;
  std::vector<int32_t> expert_TK;  // selected expert ids, best first
  std::vector<float> weight_TK;    // combine weights
};

// pre_softmax: softmax over all E, take top-k, no renormalisation (HF norm_topk_prob=false).
// otherwise:   top-k of the logits, softmax over those k (= renormalised top-k probabilities).
// Ties pick the lower expert id, as torch.topk does on CPU.
Routing route_topk(const float* logits_TE, int64_t T, int64_t E, int64_t K, bool pre_softmax);

// Row-wise softmax in double, rounded to float; lse_T (optional) gets each row's log-sum-exp.
void softmax_rows(const float* x_TE, int64_t T, int64_t E, float* p_TE, double* lse_T);

// Routing with the aux-loss-free expert bias: the top-k by score + bias_E (score = probs_TE when
// pre_softmax, else the logits), combine weights from the unbiased scores. Training and
// inference both route through this, so they choose the same experts.
Routing route_topk_biased(const float* logits_TE, const float* probs_TE, int64_t T, int64_t E, int64_t K,
                          bool pre_softmax, const float* bias_E);

}  // namespace moe::model
