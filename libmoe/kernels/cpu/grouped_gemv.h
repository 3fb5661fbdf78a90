// Decode of grouped experts on the CPU: when every selected expert has only a few tokens
// (the GEMV regime of linear()), the experts run as two parallel regions over all of their
// rows together rather than one expert per thread, so many small experts (ffn 256, top-8)
// stream at the rate of one large matrix. Used by ops::grouped_swiglu.
#pragma once
#include <cstdint>
#include <span>

#include "core/tensor.h"

namespace moe::kernels::cpu {

// True when every expert with rows has at most kGemvMaxTokens of them (and at least one has).
bool grouped_gemv_applies(std::span<const int64_t> blocks_E);

// For each expert e with rows [offsets_E[e], + blocks_E[e]) of x_perm_RD: gu = x · fc1_E[e]ᵀ,
// h = swiglu(gu) (into h_RF, or a reused scratch when h_RF is null), y = h · fc2_E[e]ᵀ.
// Bitwise the same outputs as linear() per expert. Requires grouped_gemv_applies(blocks_E).
void grouped_swiglu_gemv(const float* x_perm_RD, int64_t D, int64_t F, std::span<const int64_t> offsets_E,
                         std::span<const int64_t> blocks_E, std::span<const Tensor> fc1_E,
                         std::span<const Tensor> fc2_E, float* gu_R2F, float* h_RF, float* y_perm_RD);

}  // namespace moe::kernels::cpu
