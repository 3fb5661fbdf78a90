#include "model/mlp.h"

#include "kernels/ops.h"

namespace moe::model {

SwigluSaved carve_swiglu_saved(Arena& keep, int64_t T, int64_t F, bool recompute_act) {
  SwigluSaved s;
  s.gu_T2F = keep.take<float>(size_t(T * 2 * F));
  if (!recompute_act) s.h_TF = keep.take<float>(size_t(T * F));
  return s;
}

std::span<float> carve_swiglu_forward_scratch(Arena& ws, int64_t T, int64_t F, bool recompute_act) {
  return recompute_act ? ws.take<float>(size_t(T * F)) : std::span<float>();
}

SwigluScratch carve_swiglu_backward_scratch(Arena& ws, int64_t T, int64_t F, bool recompute_act) {
  SwigluScratch s;
  if (recompute_act) s.h_TF = ws.take<float>(size_t(T * F));
  s.dh_TF = ws.take<float>(size_t(T * F));
  s.dgu_T2F = ws.take<float>(size_t(T * 2 * F));
  return s;
}

void swiglu_mlp_forward(const Context& ctx, const float* x, int64_t T, const Tensor& fc1, const Tensor& fc2,
                        Arena& keep, SwigluSaved& s, float* y, bool accumulate, bool recompute_act) {
  const Backend& be = ctx.backend;
  const int64_t F = fc2.dim(1);
  s = carve_swiglu_saved(keep, T, F, recompute_act);
  Arena& ws = *ctx.workspace;
  ArenaScope scope(ws);
  // Recomputed in the backward: the activation lives only until fc2 has read it.
  float* h = recompute_act ? carve_swiglu_forward_scratch(ws, T, F, true).data() : s.h_TF.data();
  ops::linear(be, x, T, fc1, nullptr, s.gu_T2F.data());
  ops::swiglu(be, s.gu_T2F.data(), T, F, h);
  ops::linear(be, h, T, fc2, nullptr, y, accumulate);
}

void swiglu_mlp_backward(const Context& ctx, const float* x, int64_t T, const Tensor& fc1, const Tensor& fc2,
                         const SwigluSaved& s, const float* dy, float* dx, bool accumulate_dx, Tensor& dfc1,
                         Tensor& dfc2) {
  const Backend& be = ctx.backend;
  const int64_t F = fc2.dim(1), D = fc2.dim(0);
  ArenaScope scope(*ctx.workspace);
  const SwigluScratch t = carve_swiglu_backward_scratch(*ctx.workspace, T, F, s.h_TF.empty());
  const float* h = s.h_TF.data();
  if (s.h_TF.empty()) {
    ops::swiglu(be, s.gu_T2F.data(), T, F, t.h_TF.data());
    h = t.h_TF.data();
  }
  ops::linear_backward_weight(be, dy, h, T, D, F, dfc2.f32());                    // dfc2 += dyᵀ h
  ops::linear_backward_input(be, dy, T, fc2.f32(), D, F, t.dh_TF.data(), false);  // dh = dy fc2
  ops::swiglu_backward(be, s.gu_T2F.data(), t.dh_TF.data(), T, F, t.dgu_T2F.data());
  ops::linear_backward_weight(be, t.dgu_T2F.data(), x, T, 2 * F, D, dfc1.f32());  // dfc1 += dguᵀ x
  ops::linear_backward_input(be, t.dgu_T2F.data(), T, fc1.f32(), 2 * F, D, dx, accumulate_dx);
}

}  // namespace moe::model
