// Token dispatcher (single process): groups the (token, slot) pairs chosen by the router by
// expert, so each expert runs one batched pass over its tokens, and combines the expert
// outputs back per token with the routing weights. The EP all-to-all version replaces only
// dispatch and combine. Pairs whose expert is -1 (dropped at capacity) are skipped; with
// pad_to each expert's block is padded with zero rows to that many rows. The row map and the
// copies are ops (kernels/ops.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/backend.h"
#include "model/router.h"

namespace moe::model {

class TokenDispatcher {
 public:
  TokenDispatcher(const Backend& b, const Routing& r, int64_t num_experts, int64_t pad_to = 0);
  int64_t num_experts() const { return int64_t(counts_E_.size()); }
  int64_t count(int64_t e) const { return counts_E_[size_t(e)]; }
  int64_t offset(int64_t e) const { return offsets_E_[size_t(e)]; }
  // Rows expert e's block holds: its count, or pad_to when padding.
  int64_t block(int64_t e) const { return pad_to_ > 0 ? pad_to_ : count(e); }
  const std::vector<int64_t>& offsets() const { return offsets_E_; }
  const std::vector<int64_t>& blocks() const { return blocks_E_; }
  int64_t rows() const { return int64_t(row_slot_.size()); }
  // x_TD -> x_perm [rows, D]: rows of expert e are [offset(e), offset(e) + block(e)).
  void permute(const float* x_TD, int64_t D, float* x_perm) const;
  // dx_TD += each row's gradient at its token (the backward of permute).
  void permute_backward_add(const float* dx_perm, int64_t D, float* dx_TD) const;
  // out_TD += sum over a token's rows of weight * y_perm[row].
  void unpermute_add(const float* y_perm, int64_t D, float* out_TD) const;
  // The backward of unpermute_add: dy_perm per row, and the gradient of each routing weight.
  void unpermute_add_backward(const float* dout_TD, const float* y_perm, int64_t D, float* dy_perm,
                              float* dweight_TK) const;

 private:
  Backend be_;
  int64_t T_, K_, pad_to_;
  std::vector<int64_t> counts_E_, offsets_E_, blocks_E_, row_slot_;
  std::vector<float> weight_TK_;
};

}  // namespace moe::model
