#include "kernels/cpu/embedding.h"

#include "core/error.h"
#include "core/parallel.h"

namespace moe::kernels::cpu {

namespace {
// Below this much work a parallel region costs more than it saves.
constexpr int64_t kParallelMin = int64_t(1) << 16;
}  // namespace

void embedding_gather(const void* table_VD, DType dtype, int64_t V, int64_t D, const int32_t* ids_T, int64_t T,
                      float* out_TD) {
  // Checked before the parallel region: an exception must not leave an OpenMP thread.
  for (int64_t t = 0; t < T; ++t)
    MOE_ASSERT(ids_T[t] >= 0 && ids_T[t] < V, "token id {} at {} is outside the vocabulary [0, {})", ids_T[t], t, V);
  const size_t row_bytes = size_t(D) * dtype_size(dtype);
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t)
      convert_to_f32(static_cast<const char*>(table_VD) + size_t(ids_T[t]) * row_bytes, dtype, out_TD + t * D,
                     size_t(D));
  };
  if (T * D < kParallelMin) body(0, T);
  else parallel_for(T, body);
}

void embedding_scatter_add(const float* dout_TD, const int32_t* ids_T, int64_t T, int64_t D, float* dtable_VD) {
  // Threads own column ranges and walk all tokens in order: repeated ids never race and each
  // element sums in token order, exactly as a serial loop would.
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t t = 0; t < T; ++t) {
      float* dst = dtable_VD + int64_t(ids_T[t]) * D;
      const float* src = dout_TD + t * D;
      for (int64_t i = b; i < e; ++i) dst[i] += src[i];
    }
  };
  if (T * D < kParallelMin) body(0, D);
  else parallel_for(D, body);
}

}  // namespace moe::kernels::cpu
