// Vectorised exp for the softmax and SiLU of the prefill (AVX2 variant chosen at run time,
// scalar std::exp otherwise). Relative error below 2e-7 over the range softmax uses.
#pragma once
#include <cstdint>

namespace moe::kernels::cpu {

// x[i] = exp(x[i] - shift); returns the sum of the results (in double).
double exp_shift_sum(float* x, int64_t n, float shift);
// y[i] = x[i] / (1 + exp(-x[i])) * u[i]  (SiLU(gate) * up)
void silu_mul(const float* x, const float* u, float* y, int64_t n);
// max(x[0..n)), -inf for n = 0; NaNs are skipped. The scalar loop is a serial chain that
// compilers do not vectorise without -ffast-math.
float max_value(const float* x, int64_t n);

// The AVX2 bodies (vexp_avx2.cpp); callers use the functions above.
double exp_shift_sum_avx2(float* x, int64_t n, float shift);
void silu_mul_avx2(const float* x, const float* u, float* y, int64_t n);
float max_value_avx2(const float* x, int64_t n);

}  // namespace moe::kernels::cpu
