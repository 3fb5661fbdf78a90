// GEMV kernels behind linear(): y[t, n] (+)= dot(x[t, :], W[n, :]) for rows n in [n0, n1).
// The AVX2/FMA/F16C variant lives in gemv_avx2.cpp and is chosen at run time.
#pragma once
#include <cstdint>
#include <span>

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

// Rows [n0, n1) of one GEMV.
struct GemvRange {
  GemvArgs a;
  int64_t n0, n1;
};

// Several GEMVs (one matrix, or every selected expert's) in one parallel region: the rows are
// cut into blocks of about 64 KiB of weights and threads take blocks from a shared counter as
// they free up, so a thread the OS delays holds up only its current block. Each output is
// computed exactly as gemv_rows computes it, whichever thread runs it. Small totals run on the
// calling thread; inside a parallel region everything runs on the calling thread. With AVX-512
// a job of two or more tokens runs the tiled kernel below (and only then may callers send more
// than kGemvMaxTokens; see max_gemv_tokens() in linear.h).
void gemv_many(std::span<const GemvRange> jobs);

void gemv_rows_scalar(const GemvArgs& a, int64_t n0, int64_t n1);
void gemv_rows_avx2(const GemvArgs& a, int64_t n0, int64_t n1);
// The same product for more than kGemvMaxTokens tokens, in register tiles (gemm_avx512.cpp).
void gemm_rows_avx512(const GemvArgs& a, int64_t n0, int64_t n1);
// bf16 -> f32 for the sgemm path's widened weight blocks.
void widen_bf16_avx2(const uint16_t* src, float* dst, int64_t n);

}  // namespace moe::kernels::cpu
