// Dense projections on the CPU: y = x · Wᵀ (+ bias), the one GEMM shape every layer uses.
// Weights stay in their stored dtype (F32, BF16, F16) and are widened on the fly, so decode
// streams as few bytes as the checkpoint holds. Few tokens (decode) take a hand-vectorised
// GEMV that reads each weight row once; many tokens (prefill) go to OpenBLAS sgemm, or, with
// AVX-512 and up to kTiledMaxTokens, to a tiled kernel over the weights in place.
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
// With AVX-512, up to this many tokens take the tiled kernel that reads the weights in place
// (gemm_avx512.cpp) instead of sgemm, through the same row-block scheduler as the GEMV
// (Zen 5, 2 threads: 320-390 GFLOP/s at 512-4096 tokens where OpenBLAS sgemm gives 200-390).
constexpr int64_t kTiledMaxTokens = 4096;
// The most tokens that path serves on this CPU (kGemvMaxTokens without AVX-512).
int64_t max_gemv_tokens();
// Up to this many tokens the sgemm path computes yᵀ = W · xᵀ (faster for few rows of x).
constexpr int64_t kTransposeMaxTokens = 256;

}  // namespace moe::kernels::cpu
