// Dense projections on the CPU: y = x · Wᵀ (+ bias), the one GEMM shape every layer uses.
// Weights stay in their stored dtype (F32, BF16, F16) and are widened on the fly, so decode
// streams as few bytes as the checkpoint holds. Few tokens (decode) take a hand-vectorised
// GEMV that reads each weight row once; many tokens (prefill) go to OpenBLAS sgemm.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace moe::kernels::cpu {

// x_TD: T rows of D floats; W_ND: [N, D] in any DType; bias_N may be null; y_TN: T rows of N.
// With accumulate, y += result (bias included); otherwise y is overwritten.
void linear(const float* x_TD, int64_t T, const Tensor& W_ND, const float* bias_N, float* y_TN,
            bool accumulate = false);

// Same, restricted to output rows [n0, n1) of W (used by callers that split W themselves).
// y_TN keeps its full row stride N.
void linear_rows(const float* x_TD, int64_t T, const Tensor& W_ND, int64_t n0, int64_t n1, float* y_TN,
                 bool accumulate);

// OpenBLAS runs single-threaded inside our OpenMP threads (called before any sgemm here).
void sgemm_single_threaded();

// Below this many tokens linear() uses the GEMV path.
constexpr int64_t kGemvMaxTokens = 8;
// Up to this many tokens the sgemm path computes yᵀ = W · xᵀ (faster for few rows of x).
constexpr int64_t kTransposeMaxTokens = 256;

}  // namespace moe::kernels::cpu
