// Cross-entropy over the vocabulary with an ignore label, fused with its gradient (CPU, fp32):
// the logits buffer is overwritten by d(loss)/d(logits), so a [T, V] gradient never needs a
// second buffer. Used by the LM head in chunks of tokens.
#pragma once
#include <cstdint>

namespace moe::kernels::cpu {

struct CrossEntropySums {
  double loss = 0;      // sum over counted tokens of logsumexp(logits) - logits[label]
  int64_t count = 0;    // tokens with label >= 0
  int64_t correct = 0;  // of those, argmax(logits) == label
};

// For rows with label >= 0: loss as above; logits row becomes grad_scale * (softmax - onehot).
// Rows with a negative label (ignored) become zero. InputError-free: labels are checked < V by
// the caller.
CrossEntropySums cross_entropy_forward_backward(float* logits_TV, int64_t T, int64_t V, const int32_t* labels_T,
                                                float grad_scale);

}  // namespace moe::kernels::cpu
