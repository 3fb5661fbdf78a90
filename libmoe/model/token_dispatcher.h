// Token dispatcher (single process): groups the (token, slot) pairs chosen by the router by
// expert, so each expert runs one batched pass over its tokens, and combines the expert
// outputs back per token with the routing weights. The EP all-to-all version replaces only
// dispatch and combine. Pairs whose expert is -1 (dropped at capacity) are skipped; with
// pad_to each expert's block is padded with zero rows to that many rows. The row map and the
// copies are ops (kernels/ops.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "core/arena.h"
#include "kernels/backend.h"
#include "model/router.h"

namespace moe::model {

class TokenDispatcher {
 public:
  // The row map carved from `keep`, sized for the worst case (max_rows; capacity 0: dropless);
  // the routing's spans must outlive the dispatcher (the engine keeps both in one arena).
  TokenDispatcher(const Backend& b, std::span<const int32_t> expert_TK, std::span<const float> weight_TK, int64_t T,
                  int64_t K, int64_t num_experts, int64_t capacity, int64_t pad_to, Arena& keep);
  // Standalone (tests, tools): owns its row map and a copy of the weights.
  TokenDispatcher(const Backend& b, const Routing& r, int64_t num_experts, int64_t pad_to = 0);
  TokenDispatcher(TokenDispatcher&&) = default;  // a moved vector keeps its buffer: the spans stay valid
  TokenDispatcher& operator=(TokenDispatcher&&) = default;
  TokenDispatcher(const TokenDispatcher&) = delete;
  TokenDispatcher& operator=(const TokenDispatcher&) = delete;

  // Rows the dispatcher may build for T tokens, top-K of E: every pair (dropless), at most
  // E x capacity with dropping, exactly E x pad_to with padding. What the workspace plans for.
  static int64_t max_rows(int64_t T, int64_t K, int64_t E, int64_t capacity, int64_t pad_to);
  // Carves what the arena constructor keeps (the sizes the workspace is planned from).
  static void carve(Arena& keep, int64_t E, int64_t max_rows);

  int64_t num_experts() const { return int64_t(counts_E_.size()); }
  int64_t count(int64_t e) const { return counts_E_[size_t(e)]; }
  int64_t offset(int64_t e) const { return offsets_E_[size_t(e)]; }
  // Rows expert e's block holds: its count, or pad_to when padding.
  int64_t block(int64_t e) const { return pad_to_ > 0 ? pad_to_ : count(e); }
  std::span<const int64_t> offsets() const { return offsets_E_; }
  std::span<const int64_t> blocks() const { return blocks_E_; }
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
  void plan(const int32_t* expert_TK, int64_t E);

  Backend be_;
  int64_t T_, K_, pad_to_;
  std::span<int64_t> counts_E_, offsets_E_, blocks_E_, row_slot_;
  std::span<const float> weight_TK_;
  std::vector<int64_t> own_index_;  // standalone: counts, offsets, blocks and row map
  // On a backend whose memory is not the host's: counts, offsets and blocks on the host (the
  // experts' GEMMs are sized there; the row map stays in the backend's memory).
  std::vector<int64_t> host_index_;
  std::vector<float> own_weight_;  // standalone: the weights
};

}  // namespace moe::model
