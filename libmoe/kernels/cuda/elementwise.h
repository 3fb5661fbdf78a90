// CUDA twins of the element-wise and row-wise ops (kernels/cpu/elementwise.h, backward.h,
// gate.h, adamw.h): residual add, fill, copy, the backwards of RMSNorm, SwiGLU and RoPE, the
// shared-expert gate and the optimizer updates over a flat buffer. Same layouts and semantics
// as the CPU ops; pointers are device memory; work is queued on `stream`.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/adamw.h"
#include "kernels/cuda/cuda_ops.h"

namespace moe::kernels::cuda {

void add(float* y, const float* x, int64_t n, Stream stream = nullptr);  // y += x
void fill(float* y, float value, int64_t n, Stream stream = nullptr);
void copy(float* y, const float* x, int64_t n, Stream stream = nullptr);

// dx_TD overwritten (may alias dy_TD); dw_D += the weight gradient (per column, summed over the
// tokens in double, then added once).
void rmsnorm_backward(const float* x_TD, int64_t T, int64_t D, const float* w_D, float eps, const float* dy_TD,
                      float* dx_TD, float* dw_D, Stream stream = nullptr);
void swiglu_backward(const float* gu_T2F, const float* dh_TF, int64_t T, int64_t F, float* dgu_T2F,
                     Stream stream = nullptr);
void rope_apply_backward(float* dx_THd, int64_t T, int64_t H, int64_t d, const int32_t* pos_T, const float* cos_Pd2,
                         const float* sin_Pd2, Stream stream = nullptr);

// gate_T = sigmoid(logit_T) (1 when logit_T is null), y_TD += gate * shared_TD; and its backward
// (dlogit_T may be null), the dot in double.
void shared_gate_forward(const float* logit_T, const float* shared_TD, int64_t T, int64_t D, float* gate_T, float* y_TD,
                         Stream stream = nullptr);
void shared_gate_backward(const float* dy_TD, const float* shared_TD, const float* gate_T, int64_t T, int64_t D,
                          float* dshared_TD, float* dlogit_T, Stream stream = nullptr);

// The optimizer updates of kernels/cpu/adamw.h over n device floats, same scalars (formed on the
// host by cpu::adamw_scalars) and the same maxima, which come back to the host: these two wait
// for the stream.
cpu::UpdateMaxima adamw_update(const cpu::AdamWScalars& c, float* w, float* m, float* v, const float* g, size_t n,
                               bool decay, bool write, Stream stream = nullptr);
cpu::UpdateMaxima sgd_update(double lr, float weight_decay, float momentum, float* w, float* buf, const float* g,
                             size_t n, bool decay, bool write, Stream stream = nullptr);

}  // namespace moe::kernels::cuda
