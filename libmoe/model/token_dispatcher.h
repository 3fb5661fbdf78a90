// Token dispatcher (single process): groups the (token, slot) pairs chosen by the router by
// expert, so each expert runs one batched pass over its tokens, and combines the expert
// outputs back per token with the routing weights. The EP all-to-all version replaces only
// dispatch and combine.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "model/router.h"

namespace moe::model {

class TokenDispatcher {
 public:
  TokenDispatcher(const Routing& r, int64_t num_experts);
  int64_t num_experts() const { return int64_t(counts_E_.size()); }
  int64_t count(int64_t e) const { return counts_E_[size_t(e)]; }
  int64_t offset(int64_t e) const { return offsets_E_[size_t(e)]; }
  int64_t rows() const { return int64_t(token_of_row_.size()); }
  // x_TD -> x_perm [rows, D]: rows of expert e are [offset(e), offset(e) + count(e)).
  void permute(const float* x_TD, int64_t D, float* x_perm) const;
  // out_TD += sum over a token's rows of weight * y_perm[row].
  void unpermute_add(const float* y_perm, int64_t D, float* out_TD) const;

 private:
  std::vector<int64_t> counts_E_, offsets_E_;
  std::vector<int64_t> token_of_row_;
  std::vector<float> weight_of_row_;
};

}  // namespace moe::model
