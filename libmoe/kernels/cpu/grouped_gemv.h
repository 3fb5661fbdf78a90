// Grouped experts on the CPU without sgemm: when every selected expert has at most
// max_gemv_tokens() tokens (decode; with AVX-512 also a prefill's share of each expert), the
// experts run in one or two parallel regions over all of their rows together rather than one
// parallel region per matrix, so many small experts (ffn 256, top-8) stream at the rate of one
// large matrix. Used by ops::grouped_swiglu.
#pragma once
#include <cstdint>
#include <span>

#include "core/tensor.h"

namespace moe::kernels::cpu {

// True when every expert with rows has at most max_gemv_tokens() of them (and at least one has).
bool grouped_gemv_applies(std::span<const int64_t> blocks_E);

// For each expert e with rows [offsets_E[e], + blocks_E[e]) of x_perm_RD: gu = x · fc1_E[e]ᵀ,
// h = swiglu(gu) (into h_RF, or a reused scratch when h_RF is null), y = h · fc2_E[e]ᵀ.
// Bitwise the same outputs as linear() per expert. Requires grouped_gemv_applies(blocks_E).
void grouped_swiglu_gemv(const float* x_perm_RD, int64_t D, int64_t F, std::span<const int64_t> offsets_E,
                         std::span<const int64_t> blocks_E, std::span<const Tensor> fc1_E,
                         std::span<const Tensor> fc2_E, float* gu_R2F, float* h_RF, float* y_perm_RD);

// Decode's experts by id, without a row map (the reference for the CUDA op a device decodes with,
// which reads the ids where the router wrote them): for each (token, slot) pair p = t K + k with
// e = expert_TK[p] >= 0, gu_P2F[p] = x_TD[t] · fc1_E[e]ᵀ, h_PF[p] = swiglu(gu), y_PD[p] =
// h · fc2_E[e]ᵀ; then y_TD[t] += Σ_k weight_TK[p] y_PD[p], k ascending.
void experts_by_id(const float* x_TD, int64_t T, int64_t K, int64_t D, int64_t F, const int32_t* expert_TK,
                   const float* weight_TK, std::span<const Tensor> fc1_E, std::span<const Tensor> fc2_E, float* gu_P2F,
                   float* h_PF, float* y_PD, float* y_TD);

}  // namespace moe::kernels::cpu
