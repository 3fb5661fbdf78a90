// Megatron's distributed optimizer (--use_distributed_optimizer) over a data-parallel group: the
// flat gradient buffer is reduce-scattered so that each rank holds the summed gradients of one
// contiguous shard of the flat parameters; each rank clips with the global norm, updates its
// shard and keeps the Adam state of that shard only (1/DP of the optimizer memory); the updated
// shards are all-gathered back into every rank's parameters.
//
// Shards: with n parameters and DP ranks, rank r owns [r*s, (r+1)*s), s = n / DP, and the last
// rank also the n % DP remainder, which is all-reduced instead (reduce-scatter takes equal
// chunks). A shard cuts parameters anywhere: the optimizer sees each cut piece as a parameter of
// the same name, so weight decay and the update are element-wise as on one process.
//
// Memory: the summed shard lands in the gradient buffer itself (its other chunks are dead after
// the reduction, as in Megatron's grad buffer), and both collectives go in pieces of about 32 MB
// staged through one small buffer, so neither moectl nor MPI holds a second copy of the buffer.
//
// Checkpoints keep the single-process layout: gather_state() assembles the whole state on every
// rank (a collective) for the writer to save, and load_state() takes this rank's slice of a
// whole state read from any checkpoint, so a run resumes under any DP size.
#pragma once
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "train/optimizer.h"

namespace moe::train {

class DistributedOptimizer {
 public:
  // `params` and `grads` are the model's flat buffers (same length); `refs` every parameter as a
  // view into them, in any order. The group must outlive this object.
  // `counted_in_norm` (absent: all) says which parameters' squares reduce_gradients() returns: under
  // tensor parallelism a TP rank other than 0 leaves out the parameters every TP rank holds whole.
  DistributedOptimizer(const OptimizerConfig& cfg, std::span<float> params, std::span<float> grads,
                       std::span<const ParamRef> refs, dist::Communicator& dp,
                       const std::function<bool(const std::string&)>& counted_in_norm = {});

  // The gradients summed over the group into this rank's shard; returns shard_sum_of_squares().
  double reduce_gradients();
  // The sum of squares of the shard's counted gradients (the caller sums them over the ranks for
  // the global norm), once the shard holds the summed gradients (reduce_gradients(), or
  // GradBuckets reducing each bucket onto its owner).
  double shard_sum_of_squares() const { return grad_sum_of_squares(counted_pieces_); }
  // The equal chunk of the flat buffers each rank owns (the last rank also the remainder).
  size_t chunk() const { return chunk_; }
  // The shard's gradients times `factor` (clipping).
  void scale_gradients(float factor);
  // step() in halves, for the caller to agree over every group first (see Optimizer).
  bool step_stays_finite(double lr, double grad_bound);
  // The update of this rank's shard, then (`gather`) every rank's parameters are the updated ones;
  // without `gather` the caller moves them (FlatBuckets::start_gather).
  void apply_step(double lr, bool gather = true);

  // The whole optimizer state into `full` (bound, if it is not, to every parameter in flat order,
  // as the trainer binds a single-process optimizer): a collective over the group.
  void gather_state(Optimizer& full) const;
  // This rank's slice of `full` (a whole state, e.g. loaded from a checkpoint), and its step count.
  void load_state(const Optimizer& full);

 private:
  std::span<float> params_, grads_;
  dist::Communicator& dp_;
  size_t chunk_ = 0, begin_ = 0, end_ = 0;  // equal chunk size; this rank's [begin, end)
  std::vector<ParamRef> all_;               // every parameter, in flat order
  std::vector<ParamRef> pieces_;            // the parameters' parts inside the shard, in flat order
  std::vector<ParamRef> counted_pieces_;    // those counted in the gradient norm
  std::vector<size_t> piece_offset_;        // where each piece starts inside its parameter
  size_t piece_ = 0;                        // elements of one rank's part of a collective piece
  mutable std::vector<float> staging_;      // every rank's part of one piece, then this rank's part
  Optimizer shard_opt_;

  // Every rank's [r*chunk, (r+1)*chunk) of `v` (this rank's part in place) onto every rank, and
  // the remainder from the last rank.
  void all_gather_flat(float* v) const;
};

}  // namespace moe::train
