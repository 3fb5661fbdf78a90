// The shared expert's sigmoid gate (Qwen2-MoE's shared_expert_gate) as ops: the MoE layer adds
// sigmoid(x . w_gate) * shared_expert(x) to the routed output. The gate logit is the caller's
// [T, 1] projection (a GEMM), so the op starts from logit_T.
#pragma once
#include <cstdint>

namespace moe::kernels::cpu {

// gate_T = sigmoid(logit_T) (all 1 when logit_T is null: an ungated shared expert), then
// y_TD[t] += gate_T[t] * shared_TD[t]. gate_T is overwritten and is what the backward needs.
void shared_gate_forward(const float* logit_T, const float* shared_TD, int64_t T, int64_t D, float* gate_T,
                         float* y_TD);

// dshared_TD = gate * dy (overwritten); dlogit_T = (dy . shared) gate (1 - gate), the dot in
// double (overwritten; may be null for an ungated shared expert).
void shared_gate_backward(const float* dy_TD, const float* shared_TD, const float* gate_T, int64_t T, int64_t D,
                          float* dshared_TD, float* dlogit_T);

}  // namespace moe::kernels::cpu
