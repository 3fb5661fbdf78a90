// SwiGLU MLP, one forward for inference and training: y = fc2(silu(gate) * up) with
// [gate; up] = fc1(x) (Megatron's fused fc1). Used by dense layers and the shared expert. The
// forward carves from `keep` what the backward needs (fc1's output, and the activation unless
// recompute_act drops it: Megatron's `moe_act` recompute module); its other temporaries and the
// backward's come from the context's workspace arena. Weight gradients accumulate.
#pragma once
#include <cstdint>
#include <span>

#include "core/arena.h"
#include "core/tensor.h"
#include "model/context.h"

namespace moe::model {

struct SwigluSaved {
  std::span<float> gu_T2F;  // fc1 output [gate; up]
  std::span<float> h_TF;    // swiglu output (empty when recomputed)
};

// What the forward keeps for T tokens of width F (the sizes the workspace is planned from).
SwigluSaved carve_swiglu_saved(Arena& keep, int64_t T, int64_t F, bool recompute_act);
// The forward's workspace: the activation when it is not kept (else empty).
std::span<float> carve_swiglu_forward_scratch(Arena& ws, int64_t T, int64_t F, bool recompute_act);
// The backward's workspace: dh, d[gate; up], and the activation when it was not kept.
struct SwigluScratch {
  std::span<float> h_TF, dh_TF, dgu_T2F;
};
SwigluScratch carve_swiglu_backward_scratch(Arena& ws, int64_t T, int64_t F, bool recompute_act);

// y_TD (=|+=) fc2(swiglu(fc1(x))). fc1 [2F, D], fc2 [D, F] in any dtype.
void swiglu_mlp_forward(const Context& ctx, const float* x_TD, int64_t T, const Tensor& fc1, const Tensor& fc2,
                        Arena& keep, SwigluSaved& acts, float* y_TD, bool accumulate, bool recompute_act);

// dx_TD (=|+=) d(input); dfc1 += ..., dfc2 += ... (f32 weights).
void swiglu_mlp_backward(const Context& ctx, const float* x_TD, int64_t T, const Tensor& fc1, const Tensor& fc2,
                         const SwigluSaved& acts, const float* dy_TD, float* dx_TD, bool accumulate_dx, Tensor& dfc1,
                         Tensor& dfc2);

}  // namespace moe::model
