// The vocabulary split over tensor-parallel ranks (Megatron's VocabParallelEmbedding and
// vocab_parallel_cross_entropy): each TP rank holds rows [vocab_begin, vocab_begin + vocab_rows)
// of the padded embedding and LM head (ShardSpec's local shapes). The embedding looks up the ids
// it holds, zeros elsewhere, and the group sums; the cross-entropy reduces the row max, the sum of
// exponentials and the target logit over the group, so the full [T, V] logits are never gathered.
// Used by the Stage only when the TP group has more than one rank.
#pragma once
#include <cstdint>
#include <span>

#include "core/arena.h"
#include "core/tensor.h"
#include "kernels/ops.h"
#include "model/context.h"

namespace moe::model {

// x_TD = embedding rows of `tokens` (whole on every TP rank); its ids' buffer from the workspace.
// `reduce` false: this rank's partial rows only (sequence parallelism reduce-scatters them).
void vocab_parallel_embedding(const Context& ctx, const Tensor& table, std::span<const int32_t> tokens, float* x_TD,
                              bool reduce = true);
// dtable += the rows of this rank's ids; dx_TD (the whole input gradient) is overwritten (its rows
// of other ranks' ids zeroed).
void vocab_parallel_embedding_backward(const Context& ctx, float* dx_TD, std::span<const int32_t> tokens, int64_t D,
                                       float* dtable);

// The cross-entropy's per-row buffers (n rows), carved from the workspace.
struct VocabParallelScratch {
  std::span<float> max_n, local_max_n;  // over every rank's columns, over this rank's
  std::span<double> sums_2n;            // sum of exp(logit - max), target logit
  std::span<int64_t> arg_n;             // minus the first global index of the max (a max-reduce picks the smallest)
};
VocabParallelScratch carve_vocab_parallel_scratch(Arena& ws, int64_t n);

// logits_nV: this rank's `v` columns (global ids [vocab_begin, vocab_begin + v)) of n rows with
// labels in [0, V) or < 0 (ignored). Returns the whole rows' sums (equal on every TP rank) and
// overwrites the logits with grad_scale * (softmax - onehot) restricted to this rank's columns.
ops::CrossEntropySums vocab_parallel_cross_entropy(const Context& ctx, float* logits_nV, int64_t n, int64_t v,
                                                   const int32_t* labels_n, float grad_scale);

}  // namespace moe::model
