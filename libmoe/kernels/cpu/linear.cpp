#include "kernels/cpu/linear.h"

#include <cblas.h>

#include <algorithm>
#include <mutex>
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
  parallel_for((rows + 15) / 16, [&](int64_t b, int64_t e) { kernel(a, n0 + b * 16, std::min(n1, n0 + e * 16)); });
}

// Widened copy of rows [n0, n1) of W, for sgemm.
const float* widen_rows(const Tensor& W, int64_t n0, int64_t n1, std::vector<float>& buf) {
  int64_t D = W.dim(1);
  buf.resize(size_t((n1 - n0) * D));
  const char* src = static_cast<const char*>(W.raw()) + size_t(n0 * D) * dtype_size(W.dtype());
  if (W.dtype() == DType::BF16 && cpu_has_avx2_fma_f16c())
    widen_bf16_avx2(reinterpret_cast<const uint16_t*>(src), buf.data(), (n1 - n0) * D);
  else convert_to_f32(src, W.dtype(), buf.data(), size_t((n1 - n0) * D));
  return buf.data();
}

}  // namespace

void sgemm_single_threaded() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

void linear_rows(const float* x_TD, int64_t T, const Tensor& W_ND, int64_t n0, int64_t n1, float* y_TN,
                 bool accumulate) {
  MOE_ASSERT(W_ND.ndim() == 2, "linear weight must be 2-D, got {}", shape_str(W_ND.shape()));
  const int64_t N = W_ND.dim(0), D = W_ND.dim(1);
  if (T == 0 || n1 <= n0) return;
  if (T <= kGemvMaxTokens) {
    gemv(GemvArgs{x_TD, T, D, W_ND.raw(), W_ND.dtype(), y_TN, N, accumulate}, n0, n1);
    return;
  }
  // Many tokens: each thread multiplies its own block of output rows with a single-threaded
  // sgemm (half-precision weights widened per block into a thread-local buffer), so that
  // OpenMP and OpenBLAS never compete for the cores.
  sgemm_single_threaded();
  const int64_t rows = n1 - n0, nt = num_threads();
  const int64_t block = std::max<int64_t>(16, ((rows + nt - 1) / nt + 15) / 16 * 16);
  parallel_for((rows + block - 1) / block, [&](int64_t bb, int64_t be) {
    thread_local std::vector<float> buf;
    for (int64_t blk = bb; blk < be; ++blk) {
      const int64_t b = n0 + blk * block, e = std::min(n1, b + block);
      // Bound the scratch for huge matrices (e.g. an LM head): sub-blocks of ~16 MB.
      const int64_t step = W_ND.dtype() == DType::F32 ? e - b : std::max<int64_t>(16, (int64_t(1) << 22) / D);
      for (int64_t sb = b; sb < e; sb += step) {
        const int64_t se = std::min(e, sb + step);
        const float* w = W_ND.dtype() == DType::F32 ? W_ND.data<float>() + sb * D : widen_rows(W_ND, sb, se, buf);
        if (T > kTransposeMaxTokens) {
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(se - sb), int(D), 1.0f, x_TD, int(D), w,
                      int(D), accumulate ? 1.0f : 0.0f, y_TN + sb, int(N));
          continue;
        }
        // Few tokens (e.g. one expert's share of a prefill): OpenBLAS is markedly faster on
        // yᵀ = W · xᵀ (weights as the tall operand) than on y = x · Wᵀ; transpose back after.
        thread_local std::vector<float> yt;
        yt.resize(size_t((se - sb) * T));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(se - sb), int(T), int(D), 1.0f, w, int(D), x_TD,
                    int(D), 0.0f, yt.data(), int(T));
        // In 32 x 32 tiles: a tall block (an LM head's 16k rows) read column by column would
        // miss the cache on every element.
        const int64_t rows_n = se - sb;
        for (int64_t n0 = 0; n0 < rows_n; n0 += 32)
          for (int64_t t0 = 0; t0 < T; t0 += 32)
            for (int64_t t = t0; t < std::min(T, t0 + 32); ++t) {
              float* y = y_TN + t * N + sb;
              for (int64_t n = n0; n < std::min(rows_n, n0 + 32); ++n)
                y[n] = (accumulate ? y[n] : 0.0f) + yt[size_t(n * T + t)];
            }
      }
    }
  });
}

void linear(const float* x_TD, int64_t T, const Tensor& W_ND, const float* bias_N, float* y_TN, bool accumulate) {
  const int64_t N = W_ND.dim(0);
  linear_rows(x_TD, T, W_ND, 0, N, y_TN, accumulate);
  if (bias_N)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t n = 0; n < N; ++n) y_TN[t * N + n] += bias_N[n];
}

}  // namespace moe::kernels::cpu
