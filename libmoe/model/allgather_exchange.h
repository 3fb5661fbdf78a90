// The communication of Megatron's allgather token dispatcher (--moe_token_dispatcher_type
// allgather): every rank of the EP group gathers the tokens and the routing of the whole group,
// runs its local experts on the (token, slot) pairs routed to them, weighting each output by its
// routing weight, and the partial outputs are reduce-scattered back: each rank sums every rank's
// contribution to its own tokens (in rank order, so the sum is the same on every run). The
// backward gathers the output gradients the same way and reduce-scatters the input and routing
// weight gradients.
//
// Constructing one and every call are collectives over the EP group, in the same order on every
// rank. Buffers are host memory; the gathered rows are sized from the group's token counts.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "dist/communicator.h"
#include "kernels/backend.h"
#include "model/router.h"

namespace moe::model {

class AllGatherExchange {
 public:
  // This rank's T tokens, routed to expert_TK (global ids, -1 dropped) with weight_TK; this rank
  // owns experts [rank * experts_per_rank, (rank + 1) * experts_per_rank).
  AllGatherExchange(const Backend& be, dist::Communicator& ep, int64_t T, int64_t K, std::span<const int32_t> expert_TK,
                    std::span<const float> weight_TK, int64_t experts_per_rank);

  int64_t total_tokens() const { return total_; }
  // The group's routing, rank after rank, with experts of other ranks set to -1 and this rank's
  // renumbered 0 .. experts_per_rank - 1: what a local TokenDispatcher plans from.
  const Routing& local_routing() const { return local_; }

  // Every rank's rows of width `W` ([T, W] here) -> [total_tokens(), W], rank order.
  void gather(const float* rows, int64_t W, float* all) const;
  // The reverse of gather: out [T, W] = the sum over ranks of their `all` rows for this rank's tokens.
  void reduce_scatter(const float* all, int64_t W, float* out) const;

 private:
  Backend be_;
  dist::Communicator& ep_;
  int64_t T_ = 0, total_ = 0;
  std::vector<int64_t> tokens_, first_;  // per rank: tokens, first gathered row
  Routing local_;
  mutable std::vector<float> staging_;  // [ranks, T, W] partial sums

  void gather_raw(const void* rows, int64_t W, dist::DataType dt, void* all) const;
};

}  // namespace moe::model
