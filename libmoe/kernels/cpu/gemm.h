// Row-major f32 matrix products for training (forward activations, input gradients and
// weight gradients), OpenBLAS underneath with the output rows split over our threads. Inside
// an enclosing parallel region (e.g. experts running side by side) they run on the caller.
#pragma once
#include <cstdint>

namespace moe::kernels::cpu {

// C_MN (+)= A_MK · B_NKᵀ   (y = x · Wᵀ)
void gemm_nt(int64_t M, int64_t N, int64_t K, const float* A_MK, const float* B_NK, float* C_MN, bool accumulate);
// C_MN (+)= A_MK · B_KN    (dx = dy · W)
void gemm_nn(int64_t M, int64_t N, int64_t K, const float* A_MK, const float* B_KN, float* C_MN, bool accumulate);
// C_MN (+)= A_KMᵀ · B_KN   (dW += dyᵀ · x)
void gemm_tn(int64_t M, int64_t N, int64_t K, const float* A_KM, const float* B_KN, float* C_MN, bool accumulate);

}  // namespace moe::kernels::cpu
