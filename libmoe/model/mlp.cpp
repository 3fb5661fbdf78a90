#include "model/mlp.h"

#include "kernels/ops.h"

namespace moe::model {

void swiglu_mlp_forward(const Context& ctx, const float* x, int64_t T, const Tensor& fc1, const Tensor& fc2,
                        SwigluSaved& s, float* y, bool accumulate, bool recompute_act) {
  const Backend& be = ctx.backend;
  const int64_t F = fc2.dim(1);
  s.gu_T2F.resize(size_t(T * 2 * F));
  ops::linear(be, x, T, fc1, nullptr, s.gu_T2F.data());
  s.h_TF.resize(size_t(T * F));
  ops::swiglu(be, s.gu_T2F.data(), T, F, s.h_TF.data());
  ops::linear(be, s.h_TF.data(), T, fc2, nullptr, y, accumulate);
  if (recompute_act) std::vector<float>().swap(s.h_TF);  // released: recomputed in the backward
}

void swiglu_mlp_backward(const Context& ctx, const float* x, int64_t T, const Tensor& fc1, const Tensor& fc2,
                         const SwigluSaved& s, const float* dy, float* dx, bool accumulate_dx, Tensor& dfc1,
                         Tensor& dfc2) {
  const Backend& be = ctx.backend;
  const int64_t F = fc2.dim(1), D = fc2.dim(0);
  std::vector<float> h_re;
  const float* h = s.h_TF.data();
  if (s.h_TF.empty()) {
    h_re.resize(size_t(T * F));
    ops::swiglu(be, s.gu_T2F.data(), T, F, h_re.data());
    h = h_re.data();
  }
  ops::linear_backward_weight(be, dy, h, T, D, F, dfc2.f32());  // dfc2 += dyᵀ h
  std::vector<float> dh(static_cast<size_t>(T * F)), dgu(static_cast<size_t>(T * 2 * F));
  ops::linear_backward_input(be, dy, T, fc2.f32(), D, F, dh.data(), false);  // dh = dy fc2
  ops::swiglu_backward(be, s.gu_T2F.data(), dh.data(), T, F, dgu.data());
  ops::linear_backward_weight(be, dgu.data(), x, T, 2 * F, D, dfc1.f32());  // dfc1 += dguᵀ x
  ops::linear_backward_input(be, dgu.data(), T, fc1.f32(), 2 * F, D, dx, accumulate_dx);
}

}  // namespace moe::model
