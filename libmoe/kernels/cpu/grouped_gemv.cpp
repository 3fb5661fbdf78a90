#include "kernels/cpu/grouped_gemv.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gemv.h"
#include "kernels/cpu/linear.h"

namespace moe::kernels::cpu {

bool grouped_gemv_applies(std::span<const int64_t> blocks_E) {
  bool any = false;
  for (int64_t n : blocks_E) {
    if (n > max_gemv_tokens()) return false;
    any |= n > 0;
  }
  return any;
}

void grouped_swiglu_gemv(const float* x, int64_t D, int64_t F, std::span<const int64_t> offsets,
                         std::span<const int64_t> blocks, std::span<const Tensor> fc1, std::span<const Tensor> fc2,
                         float* gu, float* h, float* y) {
  MOE_ASSERT(grouped_gemv_applies(blocks), "grouped_swiglu_gemv: an expert has more than {} rows", max_gemv_tokens());
  // Reused across calls: decode allocates nothing per token once these have grown.
  thread_local std::vector<GemvRange> jobs;
  thread_local std::vector<float> h_scratch;
  if (!h) {
    int64_t rows = 0;
    for (size_t e = 0; e < blocks.size(); ++e) rows = std::max(rows, offsets[e] + blocks[e]);
    if (h_scratch.size() < size_t(rows * F)) h_scratch.resize(size_t(rows * F));
    h = h_scratch.data();
  }
  auto fc1_job = [&](size_t e) {
    const int64_t off = offsets[e];
    return GemvRange{GemvArgs{x + off * D, blocks[e], D, fc1[e].raw(), fc1[e].dtype(), gu + off * 2 * F, 2 * F, false},
                     0, 2 * F};
  };
  auto fc2_job = [&](size_t e) {
    const int64_t off = offsets[e];
    return GemvRange{GemvArgs{h + off * F, blocks[e], F, fc2[e].raw(), fc2[e].dtype(), y + off * D, D, false}, 0, D};
  };
  thread_local std::vector<size_t> busy;
  busy.clear();
  for (size_t e = 0; e < blocks.size(); ++e) {
    if (blocks[e] == 0) continue;
    MOE_ASSERT(fc1[e].ndim() == 2 && fc1[e].dim(0) == 2 * F && fc1[e].dim(1) == D, "expert {} fc1 is {}, not [{}, {}]",
               e, shape_str(fc1[e].shape()), 2 * F, D);
    MOE_ASSERT(fc2[e].ndim() == 2 && fc2[e].dim(0) == D && fc2[e].dim(1) == F, "expert {} fc2 is {}, not [{}, {}]", e,
               shape_str(fc2[e].shape()), D, F);
    busy.push_back(e);
  }
  const int nt = num_threads();
  if (int64_t(busy.size()) >= nt && nt > 1 && !omp_in_parallel()) {
    // At least one expert per thread: one parallel region, whole experts (fc1, SwiGLU, fc2) taken
    // from a shared counter, no barrier until the end (each barrier costs on busy cores).
    // `busy` is thread_local: inside the region each thread would see its own, so the list goes by span.
    const std::span<const size_t> todo(busy);
    std::atomic<size_t> next{0};
#pragma omp parallel num_threads(nt)
    for (size_t i = next.fetch_add(1, std::memory_order_relaxed); i < todo.size();
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      const size_t e = todo[i];
      const GemvRange j1 = fc1_job(e), j2 = fc2_job(e);
      gemv_many(std::span<const GemvRange>(&j1, 1));  // in a parallel region: on this thread
      swiglu(gu + offsets[e] * 2 * F, blocks[e], F, h + offsets[e] * F);
      gemv_many(std::span<const GemvRange>(&j2, 1));
    }
    return;
  }
  // Fewer experts than threads: every expert's fc1 rows in one region, fc2's in another.
  jobs.clear();
  for (size_t e : busy) jobs.push_back(fc1_job(e));
  gemv_many(jobs);
  jobs.clear();
  for (size_t e : busy) {
    swiglu(gu + offsets[e] * 2 * F, blocks[e], F, h + offsets[e] * F);
    jobs.push_back(fc2_job(e));
  }
  gemv_many(jobs);
}

void experts_by_id(const float* x, int64_t T, int64_t K, int64_t D, int64_t F, const int32_t* expert,
                   const float* weight, std::span<const Tensor> fc1, std::span<const Tensor> fc2, float* gu, float* h,
                   float* yp, float* y) {
  for (int64_t p = 0; p < T * K; ++p) {
    const int32_t e = expert[p];
    if (e < 0) continue;
    MOE_ASSERT(size_t(e) < fc1.size(), "experts_by_id: expert {} of {}", e, fc1.size());
    linear(x + p / K * D, 1, fc1[size_t(e)], nullptr, gu + p * 2 * F);
    swiglu(gu + p * 2 * F, 1, F, h + p * F);
    linear(h + p * F, 1, fc2[size_t(e)], nullptr, yp + p * D);
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t p = t * K + k;
      if (expert[p] < 0) continue;
      const float w = weight[p];
      for (int64_t d = 0; d < D; ++d) y[t * D + d] += w * yp[p * D + d];
    }
}

}  // namespace moe::kernels::cpu
