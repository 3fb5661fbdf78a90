#include "model/token_dispatcher.h"

#include <algorithm>

#include "core/error.h"
#include "kernels/ops.h"

namespace moe::model {

int64_t TokenDispatcher::max_rows(int64_t T, int64_t K, int64_t E, int64_t capacity, int64_t pad_to) {
  if (pad_to > 0) return E * pad_to;
  return capacity > 0 ? std::min(T * K, E * capacity) : T * K;
}

void TokenDispatcher::carve(Arena& keep, int64_t E, int64_t max_rows) {
  keep.take<int64_t>(size_t(3 * E));
  keep.take<int64_t>(size_t(max_rows));
}

TokenDispatcher::TokenDispatcher(const Backend& b, std::span<const int32_t> expert_TK, std::span<const float> weight_TK,
                                 int64_t T, int64_t K, int64_t E, int64_t capacity, int64_t pad_to, Arena& keep)
    : be_(b), T_(T), K_(K), pad_to_(pad_to), weight_TK_(weight_TK) {
  // The same two carves as carve(): counts, offsets and blocks in one, then the row map.
  const std::span<int64_t> index = keep.take<int64_t>(size_t(3 * E));
  counts_E_ = index.subspan(0, size_t(E)), offsets_E_ = index.subspan(size_t(E), size_t(E));
  blocks_E_ = index.subspan(size_t(2 * E), size_t(E));
  row_slot_ = keep.take<int64_t>(size_t(max_rows(T, K, E, capacity, pad_to)));
  plan(expert_TK.data(), E);
}

TokenDispatcher::TokenDispatcher(const Backend& b, const Routing& r, int64_t E, int64_t pad_to)
    : be_(b), T_(r.T), K_(r.K), pad_to_(pad_to), own_weight_(r.weight_TK) {
  MOE_ASSERT(b.host_memory(), "a standalone token dispatcher plans in host memory");
  own_index_.resize(size_t(3 * E + max_rows(r.T, r.K, E, pad_to, pad_to)));
  const std::span<int64_t> index(own_index_);
  counts_E_ = index.subspan(0, size_t(E)), offsets_E_ = index.subspan(size_t(E), size_t(E));
  blocks_E_ = index.subspan(size_t(2 * E), size_t(E)), row_slot_ = index.subspan(size_t(3 * E));
  weight_TK_ = own_weight_;
  plan(r.expert_TK.data(), E);
}

void TokenDispatcher::plan(const int32_t* expert_TK, int64_t E) {
  const int64_t R =
      ops::permute_plan(be_, expert_TK, T_, K_, E, pad_to_, counts_E_.data(), offsets_E_.data(), row_slot_.data());
  row_slot_ = row_slot_.first(size_t(R));
  if (!be_.host_memory()) {  // the experts' GEMMs are sized on the host: counts and offsets come back
    host_index_.resize(size_t(3 * E));
    const std::span<int64_t> index(host_index_);
    ops::to_host(be_, index.data(), counts_E_.data(), size_t(2 * E) * sizeof(int64_t));  // carved together
    counts_E_ = index.subspan(0, size_t(E)), offsets_E_ = index.subspan(size_t(E), size_t(E));
    blocks_E_ = index.subspan(size_t(2 * E), size_t(E));
  }
  for (int64_t e = 0; e < E; ++e) blocks_E_[size_t(e)] = block(e);
}

void TokenDispatcher::permute(const float* x, int64_t D, float* x_perm) const {
  ops::permute(be_, x, D, row_slot_.data(), rows(), K_, x_perm);
}

void TokenDispatcher::permute_backward_add(const float* dx_perm, int64_t D, float* dx) const {
  ops::permute_backward_add(be_, dx_perm, D, row_slot_.data(), rows(), K_, dx);
}

void TokenDispatcher::unpermute_add(const float* y_perm, int64_t D, float* out) const {
  ops::unpermute_add(be_, y_perm, D, row_slot_.data(), rows(), K_, weight_TK_.data(), out);
}

void TokenDispatcher::unpermute_add_backward(const float* dout, const float* y_perm, int64_t D, float* dy_perm,
                                             float* dweight) const {
  ops::unpermute_add_backward(be_, dout, y_perm, D, row_slot_.data(), rows(), T_, K_, weight_TK_.data(), dy_perm,
                              dweight);
}

}  // namespace moe::model
