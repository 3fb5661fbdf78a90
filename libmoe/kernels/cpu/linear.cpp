#include "kernels/cpu/linear.h"

#include <cblas.h>

#include <algorithm>
#include <vector>

#include "core/cpu_features.h"
#include "core/parallel.h"
#include "kernels/cpu/gemv.h"

namespace moe::kernels::cpu {

void gemv_rows_scalar(const GemvArgs& a, int64_t n0, int64_t n1) {
  const auto* h = static_cast<const uint16_t*>(a.W);
  const auto* f = static_cast<const float*>(a.W);
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t t = 0; t < a.T; ++t) {
      const float* x = a.x + t * a.D;
      float s = 0;
      for (int64_t d = 0; d < a.D; ++d) {
        int64_t i = n * a.D + d;
        float w = a.wtype == DType::F32 ? f[i] : (a.wtype == DType::BF16 ? bf16_to_f32(h[i]) : f16_to_f32(h[i]));
        s += w * x[d];
      }
      float* y = a.y + t * a.N + n;
      *y = a.accumulate ? *y + s : s;
    }
  }
}

namespace {

void gemv(const GemvArgs& a, int64_t n0, int64_t n1) {
  auto kernel = cpu_has_avx2_fma_f16c() ? gemv_rows_avx2 : gemv_rows_scalar;
  // Split rows over threads in chunks of 16 rows so that threads never share a cache line of y.
  int64_t rows = n1 - n0;
  if (rows * a.D < 32768) {
    kernel(a, n0, n1);
    return;
  }
  parallel_for((rows + 15) / 16, [&](int64_t b, int64_t e) {
    kernel(a, n0 + b * 16, std::min(n1, n0 + e * 16));
  });
}

// Widened copy of rows [n0, n1) of W, for sgemm.
const float* widen_rows(const Tensor& W, int64_t n0, int64_t n1, std::vector<float>& buf) {
  int64_t D = W.dim(1);
  buf.resize(size_t((n1 - n0) * D));
  const char* src = static_cast<const char*>(W.raw()) + size_t(n0 * D) * dtype_size(W.dtype());
  parallel_for(n1 - n0, [&](int64_t b, int64_t e) {
    convert_to_f32(src + size_t(b * D) * 2, W.dtype(), buf.data() + b * D, size_t((e - b) * D));
  });
  return buf.data();
}

}  // namespace

void linear_rows(const float* x_TD, int64_t T, const Tensor& W_ND, int64_t n0, int64_t n1, float* y_TN,
                 bool accumulate) {
  MOE_ASSERT(W_ND.ndim() == 2, "linear weight must be 2-D, got {}", shape_str(W_ND.shape()));
  const int64_t N = W_ND.dim(0), D = W_ND.dim(1);
  if (T == 0 || n1 <= n0) return;
  if (T <= kGemvMaxTokens) {
    gemv(GemvArgs{x_TD, T, D, W_ND.raw(), W_ND.dtype(), y_TN, N, accumulate}, n0, n1);
    return;
  }
  if (W_ND.dtype() == DType::F32) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(n1 - n0), int(D), 1.0f, x_TD, int(D),
                W_ND.data<float>() + n0 * D, int(D), accumulate ? 1.0f : 0.0f, y_TN + n0, int(N));
    return;
  }
  // Half-precision weights: widen a block of rows at a time (bounded scratch), then sgemm it.
  thread_local std::vector<float> buf;
  const int64_t block = std::max<int64_t>(64, (int64_t(1) << 22) / D);
  for (int64_t b = n0; b < n1; b += block) {
    int64_t e = std::min(n1, b + block);
    const float* w = widen_rows(W_ND, b, e, buf);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(e - b), int(D), 1.0f, x_TD, int(D), w, int(D),
                accumulate ? 1.0f : 0.0f, y_TN + b, int(N));
  }
}

void linear(const float* x_TD, int64_t T, const Tensor& W_ND, const float* bias_N, float* y_TN, bool accumulate) {
  const int64_t N = W_ND.dim(0);
  linear_rows(x_TD, T, W_ND, 0, N, y_TN, accumulate);
  if (bias_N)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t n = 0; n < N; ++n) y_TN[t * N + n] += bias_N[n];
}

}  // namespace moe::kernels::cpu
