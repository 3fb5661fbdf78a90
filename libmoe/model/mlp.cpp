#include "model/mlp.h"

#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/linear.h"

namespace moe::model {

void swiglu_mlp(const float* x_TD, int64_t T, const Tensor& fc1, const Tensor& fc2, float* y_TD, bool accumulate,
                std::vector<float>& scratch) {
  namespace k = kernels::cpu;
  const int64_t F = fc2.dim(1);
  scratch.resize(size_t(T * 3 * F));
  float* gu = scratch.data();
  float* h = gu + T * 2 * F;
  k::linear(x_TD, T, fc1, nullptr, gu);
  k::swiglu(gu, T, F, h);
  k::linear(h, T, fc2, nullptr, y_TD, accumulate);
}

}  // namespace moe::model
