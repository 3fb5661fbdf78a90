// SwiGLU MLP, one forward for inference and training: y = fc2(silu(gate) * up) with
// [gate; up] = fc1(x) (Megatron's fused fc1). Used by dense layers and the shared expert. The
// forward leaves in `acts` what the backward needs (fc1's output, and the activation unless
// recompute_act drops it: Megatron's `moe_act` recompute module); weight gradients accumulate.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "model/context.h"

namespace moe::model {

struct SwigluSaved {
  std::vector<float> gu_T2F;  // fc1 output [gate; up]
  std::vector<float> h_TF;    // swiglu output (empty when recomputed)
};

// y_TD (=|+=) fc2(swiglu(fc1(x))). fc1 [2F, D], fc2 [D, F] in any dtype.
void swiglu_mlp_forward(const Context& ctx, const float* x_TD, int64_t T, const Tensor& fc1, const Tensor& fc2,
                        SwigluSaved& acts, float* y_TD, bool accumulate, bool recompute_act);

// dx_TD (=|+=) d(input); dfc1 += ..., dfc2 += ... (f32 weights).
void swiglu_mlp_backward(const Context& ctx, const float* x_TD, int64_t T, const Tensor& fc1, const Tensor& fc2,
                         const SwigluSaved& acts, const float* dy_TD, float* dx_TD, bool accumulate_dx, Tensor& dfc1,
                         Tensor& dfc2);

}  // namespace moe::model
