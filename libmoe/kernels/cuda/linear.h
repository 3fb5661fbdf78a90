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

}  // namespace moe::kernels::cuda
