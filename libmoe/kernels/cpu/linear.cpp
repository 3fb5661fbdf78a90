#include "kernels/cpu/linear.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
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

void gemv_many(std::span<const GemvRange> jobs) {
  // Decode stays on the AVX2 GEMV with AVX-512 too: it streams weights at the same rate or
  // better (measured on Zen 5: bf16 experts 31-38 GB/s against 23-31 with 512-bit loads).
  static const auto gemv_kernel = cpu_has_avx2_fma_f16c() ? gemv_rows_avx2 : gemv_rows_scalar;
  // With AVX-512 every job of two or more tokens takes the tiled kernel: its register tiles keep
  // up with memory where the GEMV, reloading x for every row, falls behind (Zen 5, weights from
  // DRAM, 8 tokens: 30 GB/s against 12 in f32, 20 against 7 in bf16). More tokens than
  // kGemvMaxTokens come here only when it exists.
  static const bool tiled = cpu_has_avx512();
  auto kernel = [](const GemvArgs& a, int64_t n0, int64_t n1) {
    if (tiled && a.T > 1) gemm_rows_avx512(a, n0, n1);
    else gemv_kernel(a, n0, n1);
  };
  // Blocks of a multiple of 16 rows, so that threads never share a cache line of y.
  constexpr int64_t kBlockBytes = int64_t(64) << 10;
  thread_local std::vector<int64_t> first_block, block_rows;  // per job; reused across calls
  first_block.resize(jobs.size() + 1);
  first_block[0] = 0;
  block_rows.resize(jobs.size());
  int64_t work = 0;
  for (size_t j = 0; j < jobs.size(); ++j) {
    const GemvArgs& a = jobs[j].a;
    const int64_t rows = std::max<int64_t>(jobs[j].n1 - jobs[j].n0, 0);
    const int64_t row_bytes = std::max<int64_t>(a.D * int64_t(dtype_size(a.wtype)), 1);
    block_rows[j] = std::max<int64_t>(16, kBlockBytes / row_bytes / 16 * 16);
    first_block[j + 1] = first_block[j] + (rows + block_rows[j] - 1) / block_rows[j];
    work += rows * a.D * std::max<int64_t>(a.T, 1);  // multiply-adds
  }
  const int64_t blocks = first_block[jobs.size()];
  const int nt = num_threads();
  if (work < 32768 || blocks <= 1 || nt <= 1 || omp_in_parallel()) {
    for (const GemvRange& j : jobs)
      if (j.n1 > j.n0) kernel(j.a, j.n0, j.n1);
    return;
  }
  // Guided: each take is a share of what is left (long streams for the hardware prefetcher at
  // first, single blocks at the end to balance), runs of blocks within a job in one call.
  std::atomic<int64_t> next{0};
  const int64_t* fb = first_block.data();
  const int64_t* br = block_rows.data();
#pragma omp parallel num_threads(nt)
  {
    size_t j = 0;  // takes come in increasing order: the job index only moves forward
    for (;;) {
      int64_t b = next.load(std::memory_order_relaxed), take = 0;
      do {
        if (b >= blocks) break;
        take = std::max<int64_t>(1, (blocks - b) / (2 * nt));
      } while (!next.compare_exchange_weak(b, b + take, std::memory_order_relaxed));
      if (b >= blocks) break;
      for (const int64_t end = b + take; b < end;) {
        while (fb[j + 1] <= b) ++j;
        const GemvRange& job = jobs[j];
        const int64_t run = std::min(end, fb[j + 1]);
        const int64_t r0 = job.n0 + (b - fb[j]) * br[j];
        kernel(job.a, r0, std::min(job.n1, job.n0 + (run - fb[j]) * br[j]));
        b = run;
      }
    }
  }
}

namespace {

void gemv(const GemvArgs& a, int64_t n0, int64_t n1) {
  const GemvRange job{a, n0, n1};
  gemv_many(std::span<const GemvRange>(&job, 1));
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

int64_t max_gemv_tokens() { return cpu_has_avx512() ? kTiledMaxTokens : kGemvMaxTokens; }

void sgemm_single_threaded() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

void linear_rows(const float* x_TD, int64_t T, const Tensor& W_ND, int64_t n0, int64_t n1, float* y_TN,
                 bool accumulate) {
  MOE_ASSERT(W_ND.ndim() == 2, "linear weight must be 2-D, got {}", shape_str(W_ND.shape()));
  const int64_t N = W_ND.dim(0), D = W_ND.dim(1);
  if (T == 0 || n1 <= n0) return;
  if (T <= max_gemv_tokens()) {
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
