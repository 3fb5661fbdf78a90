#include "kernels/cpu/vexp.h"

#include <cmath>
#include <limits>

#include "core/cpu_features.h"

namespace moe::kernels::cpu {

double exp_shift_sum(float* x, int64_t n, float shift) {
  if (cpu_has_avx2_fma_f16c()) return exp_shift_sum_avx2(x, n, shift);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += (x[i] = std::exp(x[i] - shift));
  return sum;
}

void silu_mul(const float* x, const float* u, float* y, int64_t n) {
  if (cpu_has_avx2_fma_f16c()) return silu_mul_avx2(x, u, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + std::exp(-x[i])) * u[i];
}

float max_value(const float* x, int64_t n) {
  if (cpu_has_avx2_fma_f16c()) return max_value_avx2(x, n);
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

}  // namespace moe::kernels::cpu
