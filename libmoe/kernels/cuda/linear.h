// The CUDA twin of kernels::cpu::linear for bf16 and f16 weights (f32 weights go through
// linear_f32 in cuda_ops.h): y_TN (+)= x_TD . W_NDᵀ (+ bias_N), activations f32, weights read in
// their stored dtype.
//  - Up to kHalfGemvMaxTokens tokens (decode): a GEMV kernel, a warp per weight row, that reads
//    each row once for every token, widens it in registers and sums in f32, as the CPU does.
//  - More tokens (prefill): x rounded to the weights' dtype and one cuBLAS GEMM with f32
//    accumulation and f32 output (tensor cores), within bf16's rounding of the CPU result.
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "kernels/cuda/cuda_ops.h"

namespace moe::kernels::cuda {

inline constexpr int64_t kHalfGemvMaxTokens = 8;

void linear_half(const float* x_TD, int64_t T, const void* W_ND, DType wtype, int64_t N, int64_t D, float* y_TN,
                 const float* bias_N = nullptr, bool accumulate = false, Stream stream = nullptr);

// Several projections in one cuBLAS grouped GEMM (a prefill's experts): for each g < G, rows
// [first_row[g], + rows[g]) of x_RD times W[g]ᵀ ([N, D] of `wtype`) into the same rows of y_RN.
// Half weights take x rounded to their dtype (as linear_half's GEMM path); f32 stays fp32, no
// TF32. False when this cuBLAS refuses the call (a type combination it lacks): the caller runs
// them one by one.
bool linear_grouped(const float* x_RD, int64_t G, const int64_t* rows, const int64_t* first_row, const void* const* W,
                    DType wtype, int64_t N, int64_t D, float* y_RN, Stream stream = nullptr);

// Twin of kernels::cpu::experts_by_id for few tokens (decode): the (token, slot) pairs' expert
// ids and weights are read on the device, so nothing goes to the host. A layer's experts lie side
// by side: expert e's fc1 at fc1_0 + e x fc1_stride elements (fc2 likewise), all of `wtype`.
// gu_P2F, h_PF and y_PD are the pairs' scratch; y_TD is added to.
void experts_by_id(const float* x_TD, int64_t T, int64_t K, int64_t D, int64_t F, const int32_t* expert_TK,
                   const float* weight_TK, const void* fc1_0, int64_t fc1_stride, const void* fc2_0, int64_t fc2_stride,
                   DType wtype, float* gu_P2F, float* h_PF, float* y_PD, float* y_TD, Stream stream = nullptr);

}  // namespace moe::kernels::cuda
