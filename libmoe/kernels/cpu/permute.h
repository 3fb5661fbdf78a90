// Token permutation for the MoE layer as ops: the (token, slot) pairs a router chose are grouped
// into expert-sorted rows, so each expert runs one batched pass, and the expert outputs are
// combined back per token with the routing weights. Used by the token dispatcher; the EP
// all-to-all goes between permute and the experts. Legend: T tokens, K slots per token,
// E experts, D hidden, R permuted rows.
#pragma once
#include <cstdint>

namespace moe::kernels::cpu {

// An upper bound on the rows permute_plan makes: E * pad_to with padding, else T * K.
constexpr int64_t permute_max_rows(int64_t T, int64_t K, int64_t E, int64_t pad_to) {
  return pad_to > 0 ? E * pad_to : T * K;
}

// The row map of a routing. expert_TK holds ids in [-1, E) (-1: dropped at capacity, no row).
// counts_E: kept pairs per expert; offsets_E: first row of each expert's block, blocks of
// count(e) rows, or pad_to rows each when pad_to > 0 (every count must be <= pad_to);
// row_slot_R: for each row the routing index t * K + k it carries (token = slot / K), or -1
// for a padding row. Within an expert, rows keep token order (stable), which keeps results
// deterministic. Returns R. InternalError on an id out of range or a count over pad_to.
int64_t permute_plan(const int32_t* expert_TK, int64_t T, int64_t K, int64_t E, int64_t pad_to, int64_t* counts_E,
                     int64_t* offsets_E, int64_t* row_slot_R);

// x_perm_RD[row] = x_TD[slot / K]; padding rows are zero.
void permute(const float* x_TD, int64_t D, const int64_t* row_slot_R, int64_t R, int64_t K, float* x_perm_RD);

// The backward of permute: dx_TD[slot / K] += dx_perm_RD[row], rows added in row order.
void permute_backward_add(const float* dx_perm_RD, int64_t D, const int64_t* row_slot_R, int64_t R, int64_t K,
                          float* dx_TD);

// out_TD[slot / K] += weight_TK[slot] * y_perm_RD[row], rows added in row order (the combine).
void unpermute_add(const float* y_perm_RD, int64_t D, const int64_t* row_slot_R, int64_t R, int64_t K,
                   const float* weight_TK, float* out_TD);

// The backward of unpermute_add. dy_perm_RD[row] = weight * dout[token] (padding rows zero);
// dweight_TK[slot] = dout[token] . y_perm[row] (summed in double), zero for slots without a
// row (dropped). Both overwritten; dweight_TK holds T * K values.
void unpermute_add_backward(const float* dout_TD, const float* y_perm_RD, int64_t D, const int64_t* row_slot_R,
                            int64_t R, int64_t T, int64_t K, const float* weight_TK, float* dy_perm_RD,
                            float* dweight_TK);

}  // namespace moe::kernels::cpu
