#include "model/token_dispatcher.h"

#include <cstring>

#include "core/error.h"
#include "core/parallel.h"

namespace moe::model {

TokenDispatcher::TokenDispatcher(const Routing& r, int64_t E, int64_t pad_to)
    : counts_E_(size_t(E)), offsets_E_(size_t(E)), pad_to_(pad_to) {
  const int64_t n = r.T * r.K;
  for (int64_t i = 0; i < n; ++i) {
    int32_t e = r.expert_TK[size_t(i)];
    MOE_ASSERT(e >= -1 && e < E, "router chose expert {} of {}", e, E);
    if (e >= 0) ++counts_E_[size_t(e)];
  }
  for (int64_t e = 0; e < E; ++e) MOE_ASSERT(pad_to == 0 || counts_E_[size_t(e)] <= pad_to, "expert over capacity");
  for (int64_t e = 1; e < E; ++e) offsets_E_[size_t(e)] = offsets_E_[size_t(e - 1)] + block(e - 1);
  const int64_t rows = E > 0 ? offsets_E_[size_t(E - 1)] + block(E - 1) : 0;
  token_of_row_.assign(size_t(rows), -1);
  slot_of_row_.assign(size_t(rows), -1);
  weight_of_row_.assign(size_t(rows), 0.0f);
  std::vector<int64_t> fill = offsets_E_;
  // Token order within an expert is preserved (stable), which keeps results deterministic.
  for (int64_t i = 0; i < n; ++i) {
    const int32_t e = r.expert_TK[size_t(i)];
    if (e < 0) continue;
    int64_t row = fill[size_t(e)]++;
    token_of_row_[size_t(row)] = i / r.K;
    slot_of_row_[size_t(row)] = i;
    weight_of_row_[size_t(row)] = r.weight_TK[size_t(i)];
  }
}

void TokenDispatcher::permute(const float* x_TD, int64_t D, float* x_perm) const {
  parallel_for(int64_t(token_of_row_.size()), [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const int64_t t = token_of_row_[size_t(row)];
      if (t < 0) std::memset(x_perm + row * D, 0, size_t(D) * sizeof(float));
      else std::memcpy(x_perm + row * D, x_TD + t * D, size_t(D) * sizeof(float));
    }
  });
}

void TokenDispatcher::unpermute_add(const float* y_perm, int64_t D, float* out_TD) const {
  for (size_t row = 0; row < token_of_row_.size(); ++row) {
    if (token_of_row_[row] < 0) continue;
    float* o = out_TD + token_of_row_[row] * D;
    const float* y = y_perm + int64_t(row) * D;
    const float w = weight_of_row_[row];
    for (int64_t i = 0; i < D; ++i) o[i] += w * y[i];
  }
}

}  // namespace moe::model
