#include "model/mlp_train.h"

#include "kernels/cpu/backward.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gemm.h"

namespace moe::model {

namespace k = kernels::cpu;

void swiglu_mlp_train_forward(const float* x, int64_t T, int64_t D, int64_t F, const float* fc1, const float* fc2,
                              SwigluSaved& saved, float* y, bool accumulate, bool recompute_act) {
  saved.gu_T2F.resize(size_t(T * 2 * F));
  k::gemm_nt(T, 2 * F, D, x, fc1, saved.gu_T2F.data(), false);
  std::vector<float> tmp;
  std::vector<float>& h = recompute_act ? tmp : saved.h_TF;
  h.resize(size_t(T * F));
  k::swiglu(saved.gu_T2F.data(), T, F, h.data());
  k::gemm_nt(T, D, F, h.data(), fc2, y, accumulate);
  if (recompute_act) saved.h_TF.clear();
}

void swiglu_mlp_train_backward(const float* x, int64_t T, int64_t D, int64_t F, const float* fc1, const float* fc2,
                               const SwigluSaved& saved, const float* dy, float* dx, bool accumulate_dx, float* dfc1,
                               float* dfc2) {
  std::vector<float> h_re;
  const float* h = saved.h_TF.data();
  if (saved.h_TF.empty()) {
    h_re.resize(size_t(T * F));
    k::swiglu(saved.gu_T2F.data(), T, F, h_re.data());
    h = h_re.data();
  }
  k::gemm_tn(D, F, T, dy, h, dfc2, true);  // dfc2 += dyᵀ h
  std::vector<float> dh(static_cast<size_t>(T * F)), dgu(static_cast<size_t>(T * 2 * F));
  k::gemm_nn(T, F, D, dy, fc2, dh.data(), false);  // dh = dy fc2
  k::swiglu_backward(saved.gu_T2F.data(), dh.data(), T, F, dgu.data());
  k::gemm_tn(2 * F, D, T, dgu.data(), x, dfc1, true);  // dfc1 += dguᵀ x
  k::gemm_nn(T, D, 2 * F, dgu.data(), fc1, dx, accumulate_dx);
}

}  // namespace moe::model
