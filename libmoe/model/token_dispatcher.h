// Token dispatcher (single process): groups the (token, slot) pairs chosen by the router by
// expert, so each expert runs one batched pass over its tokens, and combines the expert
// outputs back per token with the routing weights. The EP all-to-all version replaces only
// dispatch and combine. Pairs whose expert is -1 (dropped at capacity) are skipped; with
// pad_to each expert's block is padded with zero rows to that many rows.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "model/router.h"

namespace moe::model {

class TokenDispatcher {
 public:
  TokenDispatcher(const Routing& r, int64_t num_experts, int64_t pad_to = 0);
  int64_t num_experts() const { return int64_t(counts_E_.size()); }
  int64_t count(int64_t e) const { return counts_E_[size_t(e)]; }
  int64_t offset(int64_t e) const { return offsets_E_[size_t(e)]; }
  // Rows expert e's block holds: its count, or pad_to when padding.
  int64_t block(int64_t e) const { return pad_to_ > 0 ? pad_to_ : count(e); }
  int64_t rows() const { return int64_t(token_of_row_.size()); }
  // The token and the (token * K + slot) routing index of a row; -1 for padding rows.
  int64_t token_of_row(int64_t row) const { return token_of_row_[size_t(row)]; }
  int64_t slot_of_row(int64_t row) const { return slot_of_row_[size_t(row)]; }
  // x_TD -> x_perm [rows, D]: rows of expert e are [offset(e), offset(e) + count(e)).
  void permute(const float* x_TD, int64_t D, float* x_perm) const;
  // out_TD += sum over a token's rows of weight * y_perm[row].
  void unpermute_add(const float* y_perm, int64_t D, float* out_TD) const;

 private:
  std::vector<int64_t> counts_E_, offsets_E_;
  std::vector<int64_t> token_of_row_, slot_of_row_;
  std::vector<float> weight_of_row_;
  int64_t pad_to_ = 0;
};

}  // namespace moe::model
