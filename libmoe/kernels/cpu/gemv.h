// GEMV kernels behind linear(): y[t, n] (+)= dot(x[t, :], W[n, :]) for rows n in [n0, n1).
// The AVX2/FMA/F16C variant lives in gemv_avx2.cpp and is chosen at run time.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace moe::kernels::cpu {

struct GemvArgs {
  const float* x;  // [T, D]
  int64_t T, D;
  const void* W;  // [N, D] rows of `wtype`
  DType wtype;
  float* y;  // [T, N]
  int64_t N;
  bool accumulate;
};

void gemv_rows_scalar(const GemvArgs& a, int64_t n0, int64_t n1);
void gemv_rows_avx2(const GemvArgs& a, int64_t n0, int64_t n1);
// bf16 -> f32 for the sgemm path's widened weight blocks.
void widen_bf16_avx2(const uint16_t* src, float* dst, int64_t n);

}  // namespace moe::kernels::cpu
