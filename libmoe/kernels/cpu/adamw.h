// Optimizer updates as element-wise ops over a flat span of fp32 parameters: AdamW with
// decoupled weight decay (torch.optim.AdamW's single-tensor order) and SGD with momentum
// (torch.optim.SGD). Used by train/optimizer over its flat buffers; the scalars are formed
// in double and rounded to float once, as torch does with Python floats on fp32 tensors.
#pragma once
#include <cstddef>
#include <cstdint>

namespace moe::kernels::cpu {

// The per-step scalars of one AdamW update (step counts from 1).
struct AdamWScalars {
  float b1, a1, b2, a2;  // beta1, 1 - beta1, beta2, 1 - beta2
  float bc2_sqrt;        // sqrt(1 - beta2^step)
  float eps;
  float neg_step;    // -lr / (1 - beta1^step)
  float keep_decay;  // 1 - lr * weight_decay (applied to decaying parameters only)
};
AdamWScalars adamw_scalars(float beta1, float beta2, float eps, float weight_decay, double lr, int64_t step);

// The largest |new weight| and |new state| (exp_avg / momentum) of an update. Any NaN new value
// (or, for AdamW, an exp_avg_sq above FLT_MAX) makes the result non-finite, so a caller can
// refuse a step that would poison the weights.
struct UpdateMaxima {
  float w = 0, s = 0;
};

// When write: w, m, v updated in place from g. When not: nothing is written and only the
// maxima of the would-be values are returned (a dry run). decay: weight decay applies.
UpdateMaxima adamw_update(const AdamWScalars& c, float* w, float* m, float* v, const float* g, size_t n, bool decay,
                          bool write);

// torch.optim.SGD: d = g + wd w; with momentum buf = mom buf + d (a zero buffer gives d, as
// torch's first-step clone), then w -= lr d. buf may be null when momentum is 0.
UpdateMaxima sgd_update(double lr, float weight_decay, float momentum, float* w, float* buf, const float* g, size_t n,
                        bool decay, bool write);

}  // namespace moe::kernels::cpu
