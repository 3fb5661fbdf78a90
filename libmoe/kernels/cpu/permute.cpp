#include "kernels/cpu/permute.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"

namespace moe::kernels::cpu {

namespace {
constexpr int64_t kParallelMin = int64_t(1) << 16;

// Runs fn over column ranges [b, e) of D: the scatter-adds below let each thread own columns
// and walk every row in order, so a token hit by several rows sums them in row order, exactly
// as a serial loop does, for any thread count.
template <class F>
void by_columns(int64_t R, int64_t D, F&& fn) {
  if (R * D < kParallelMin) fn(int64_t(0), D);
  else parallel_for(D, fn);
}
}  // namespace

int64_t permute_plan(const int32_t* expert_TK, int64_t T, int64_t K, int64_t E, int64_t pad_to, int64_t* counts_E,
                     int64_t* offsets_E, int64_t* row_slot_R) {
  const int64_t n = T * K;
  std::fill(counts_E, counts_E + E, int64_t(0));
  for (int64_t i = 0; i < n; ++i) {
    const int32_t e = expert_TK[i];
    MOE_ASSERT(e >= -1 && e < E, "router chose expert {} of {}", e, E);
    if (e >= 0) ++counts_E[e];
  }
  int64_t rows = 0;
  for (int64_t e = 0; e < E; ++e) {
    MOE_ASSERT(pad_to == 0 || counts_E[e] <= pad_to, "expert {} holds {} rows, over its capacity {}", e, counts_E[e],
               pad_to);
    offsets_E[e] = rows;
    rows += pad_to > 0 ? pad_to : counts_E[e];
  }
  std::fill(row_slot_R, row_slot_R + rows, int64_t(-1));
  std::vector<int64_t> fill(offsets_E, offsets_E + E);
  for (int64_t i = 0; i < n; ++i)
    if (const int32_t e = expert_TK[i]; e >= 0) row_slot_R[fill[size_t(e)]++] = i;
  return rows;
}

void permute(const float* x_TD, int64_t D, const int64_t* row_slot_R, int64_t R, int64_t K, float* x_perm_RD) {
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const int64_t slot = row_slot_R[row];
      if (slot < 0) std::memset(x_perm_RD + row * D, 0, size_t(D) * sizeof(float));
      else std::memcpy(x_perm_RD + row * D, x_TD + slot / K * D, size_t(D) * sizeof(float));
    }
  };
  if (R * D < kParallelMin) body(0, R);
  else parallel_for(R, body);
}

void permute_backward_add(const float* dx_perm_RD, int64_t D, const int64_t* row_slot_R, int64_t R, int64_t K,
                          float* dx_TD) {
  by_columns(R, D, [&](int64_t b, int64_t e) {
    for (int64_t row = 0; row < R; ++row) {
      const int64_t slot = row_slot_R[row];
      if (slot < 0) continue;
      float* d = dx_TD + slot / K * D;
      const float* s = dx_perm_RD + row * D;
      for (int64_t i = b; i < e; ++i) d[i] += s[i];
    }
  });
}

void unpermute_add(const float* y_perm_RD, int64_t D, const int64_t* row_slot_R, int64_t R, int64_t K,
                   const float* weight_TK, float* out_TD) {
  by_columns(R, D, [&](int64_t b, int64_t e) {
    for (int64_t row = 0; row < R; ++row) {
      const int64_t slot = row_slot_R[row];
      if (slot < 0) continue;
      float* o = out_TD + slot / K * D;
      const float* y = y_perm_RD + row * D;
      const float w = weight_TK[slot];
      for (int64_t i = b; i < e; ++i) o[i] += w * y[i];
    }
  });
}

void unpermute_add_backward(const float* dout_TD, const float* y_perm_RD, int64_t D, const int64_t* row_slot_R,
                            int64_t R, int64_t T, int64_t K, const float* weight_TK, float* dy_perm_RD,
                            float* dweight_TK) {
  std::fill(dweight_TK, dweight_TK + T * K, 0.0f);
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const int64_t slot = row_slot_R[row];
      float* d = dy_perm_RD + row * D;
      if (slot < 0) {
        std::memset(d, 0, size_t(D) * sizeof(float));
        continue;
      }
      const float wt = weight_TK[slot];
      const float* g = dout_TD + slot / K * D;
      const float* y = y_perm_RD + row * D;
      double dot = 0;
      for (int64_t i = 0; i < D; ++i) d[i] = wt * g[i], dot += double(g[i]) * y[i];
      dweight_TK[slot] = float(dot);  // each slot has at most one row: no race
    }
  };
  if (R * D < kParallelMin) body(0, R);
  else parallel_for(R, body);
}

}  // namespace moe::kernels::cpu
