// CUDA twins of the row-softmax ops: the router's scores and top-k choice with its combine
// weights (kernels/cpu/router.h, router_topk) and cross-entropy with an ignore label fused with
// its gradient (kernels/cpu/cross_entropy.h). Same semantics, tie rules and precision (sums in
// double) as the CPU ops; pointers are device memory.
#pragma once
#include <cstdint>

#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/router.h"
#include "kernels/cuda/cuda_ops.h"

namespace moe::kernels::cuda {

// Top-k per token, best first, ties to the lower expert id; softmax or sigmoid scores and the
// selection-only expert bias as RouterOptions says (only E, K, score and pre_softmax are read).
void router_topk(const cpu::RouterOptions& o, const float* logits_TE, int64_t T, const float* expert_bias_E,
                 int32_t* expert_TK, float* weight_TK, Stream stream = nullptr);

// The logits become grad_scale * (softmax - onehot) for rows with a label >= 0, zero for the
// others; the sums come back to the host, so this waits for the stream. A label >= V (which
// callers rule out) gives a NaN row and a NaN loss instead of reading out of bounds.
cpu::CrossEntropySums cross_entropy_forward_backward(float* logits_TV, int64_t T, int64_t V, const int32_t* labels_T,
                                                     float grad_scale, Stream stream = nullptr);

}  // namespace moe::kernels::cuda
