// Row-wise CPU ops of the transformer forward pass (fp32): RMSNorm, SwiGLU, rotary
// embedding, residual adds. Shapes are in the names (legend in DESIGN.md section 6).
#pragma once
#include <cstdint>

namespace moe::kernels::cpu {

// out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w. `out` may alias `x`.
void rmsnorm(const float* x_TD, int64_t T, int64_t D, const float* w_D, float eps, float* out_TD);

// h[t, f] = silu(gu[t, f]) * gu[t, F + f]: fc1's output holds gate then up (Megatron layout).
void swiglu(const float* gu_T2F, int64_t T, int64_t F, float* h_TF);

// Rotary embedding, non-interleaved (HF rotate_half): for each token t and head h, pairs
// (i, i + d/2) rotate by the angle of position pos[t]. cos/sin tables are [max_pos, d/2].
void rope_apply(float* x_THd, int64_t T, int64_t H, int64_t d, const int32_t* pos_T, const float* cos_Pd2,
                const float* sin_Pd2);

// y += x.
void add_inplace(float* y, const float* x, int64_t n);

}  // namespace moe::kernels::cpu
