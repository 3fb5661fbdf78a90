#include "model/token_dispatcher.h"

#include "kernels/ops.h"

namespace moe::model {

TokenDispatcher::TokenDispatcher(const Backend& b, const Routing& r, int64_t E, int64_t pad_to)
    : be_(b), T_(r.T), K_(r.K), pad_to_(pad_to), counts_E_(size_t(E)), offsets_E_(size_t(E)), weight_TK_(r.weight_TK) {
  row_slot_.resize(size_t(pad_to > 0 ? E * pad_to : r.T * r.K));
  const int64_t R = ops::permute_plan(be_, r.expert_TK.data(), r.T, r.K, E, pad_to, counts_E_.data(), offsets_E_.data(),
                                      row_slot_.data());
  row_slot_.resize(size_t(R));
  blocks_E_.resize(size_t(E));
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
