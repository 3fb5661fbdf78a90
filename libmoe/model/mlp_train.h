// SwiGLU MLP for training (CPU, fp32): forward keeping what its backward needs, and the
// backward that accumulates weight gradients. Used by dense layers, each routed expert and the
// shared expert. With recompute_act the activation h = silu(gate) * up is not kept and is
// recomputed from fc1's output in the backward (Megatron's `moe_act` recompute module).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace moe::model {

struct SwigluSaved {
  std::vector<float> gu_T2F;  // fc1 output [gate; up]
  std::vector<float> h_TF;    // swiglu output (empty when recomputed)
};

// y_TD (=|+=) fc2(swiglu(fc1(x))). fc1_2FD [2F, D], fc2_DF [D, F].
void swiglu_mlp_train_forward(const float* x_TD, int64_t T, int64_t D, int64_t F, const float* fc1_2FD,
                              const float* fc2_DF, SwigluSaved& saved, float* y_TD, bool accumulate,
                              bool recompute_act);

// dx_TD (=|+=) d(input); dfc1 += ..., dfc2 += ... .
void swiglu_mlp_train_backward(const float* x_TD, int64_t T, int64_t D, int64_t F, const float* fc1_2FD,
                               const float* fc2_DF, const SwigluSaved& saved, const float* dy_TD, float* dx_TD,
                               bool accumulate_dx, float* dfc1_2FD, float* dfc2_DF);

}  // namespace moe::model
