// Backward passes of the row-wise ops in elementwise.h (CPU, fp32), for training. Each takes
// what the forward saw and the gradient of its output; weight gradients are accumulated.
#pragma once
#include <cstdint>

namespace moe::kernels::cpu {

// y = rmsnorm(x) * w. dx_TD is overwritten (it may alias dy_TD); dw_D += the weight gradient.
void rmsnorm_backward(const float* x_TD, int64_t T, int64_t D, const float* w_D, float eps, const float* dy_TD,
                      float* dx_TD, float* dw_D);

// h = silu(g) * u with gu = [g; u] per row. dgu_T2F is overwritten.
void swiglu_backward(const float* gu_T2F, const float* dh_TF, int64_t T, int64_t F, float* dgu_T2F);

// The transpose of rope_apply (rotation by minus the angle, same tables): turns the gradient
// of the rotated tensor into the gradient of its input, in place.
void rope_apply_backward(float* dx_THd, int64_t T, int64_t H, int64_t d, const int32_t* pos_T, const float* cos_Pd2,
                         const float* sin_Pd2);

}  // namespace moe::kernels::cpu
