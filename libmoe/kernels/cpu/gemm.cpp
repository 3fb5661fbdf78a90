#include "kernels/cpu/gemm.h"

#include <cblas.h>

#include <algorithm>

#include "core/parallel.h"
#include "kernels/cpu/linear.h"

namespace moe::kernels::cpu {

namespace {
// Splits the M output rows over threads once the product is big enough to pay for a barrier;
// each block is one single-threaded sgemm.
template <class F>
void by_rows(int64_t M, int64_t N, int64_t K, F&& block) {
  sgemm_single_threaded();
  if (M * N * K < (int64_t(1) << 18) || M < 8) {
    block(int64_t(0), M);
    return;
  }
  parallel_for(M, [&](int64_t b, int64_t e) { block(b, e); });
}
}  // namespace

void gemm_nt(int64_t M, int64_t N, int64_t K, const float* A, const float* B, float* C, bool accumulate) {
  if (M == 0 || N == 0) return;
  by_rows(M, N, K, [&](int64_t b, int64_t e) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(e - b), int(N), int(K), 1.0f, A + b * K, int(K), B, int(K),
                accumulate ? 1.0f : 0.0f, C + b * N, int(N));
  });
}

void gemm_nn(int64_t M, int64_t N, int64_t K, const float* A, const float* B, float* C, bool accumulate) {
  if (M == 0 || N == 0) return;
  by_rows(M, N, K, [&](int64_t b, int64_t e) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(e - b), int(N), int(K), 1.0f, A + b * K, int(K), B,
                int(N), accumulate ? 1.0f : 0.0f, C + b * N, int(N));
  });
}

void gemm_tn(int64_t M, int64_t N, int64_t K, const float* A, const float* B, float* C, bool accumulate) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate) std::fill(C, C + M * N, 0.0f);
    return;
  }
  by_rows(M, N, K, [&](int64_t b, int64_t e) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(e - b), int(N), int(K), 1.0f, A + b, int(M), B, int(N),
                accumulate ? 1.0f : 0.0f, C + b * N, int(N));
  });
}

}  // namespace moe::kernels::cpu
