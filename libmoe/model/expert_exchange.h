// The expert-parallel half of Megatron's alltoall token dispatcher: after the local
// TokenDispatcher has grouped this rank's (token, slot) rows by global expert, dispatch() sends
// every row to the EP rank that owns its expert (rank q owns experts [q*El, (q+1)*El)) and lays
// the rows it receives out grouped by local expert (source ranks in order within an expert), so
// the local experts run one grouped pass; combine() is the exact reverse. The backward uses the
// same two calls on gradients: dispatch(dy_perm) -> experts' backward -> combine(dx_local).
//
// Constructing one is a collective over the EP group (the per-expert row counts are exchanged),
// as is every dispatch() and combine(): every rank of the group calls them in the same order.
#pragma once
#include <cstdint>
#include <vector>

#include "dist/communicator.h"
#include "model/token_dispatcher.h"

namespace moe::model {

class ExpertExchange {
 public:
  // `disp` groups this rank's rows by the E = ep.size() x experts_per_rank global experts.
  ExpertExchange(const Backend& be, const TokenDispatcher& disp, dist::Communicator& ep, int64_t experts_per_rank);

  // Rows this rank's local experts receive, and their grouping (for the grouped expert ops).
  int64_t local_rows() const { return local_rows_; }
  const std::vector<int64_t>& local_offsets() const { return local_offsets_; }
  const std::vector<int64_t>& local_blocks() const { return local_blocks_; }

  // x_perm [disp.rows(), D] -> x_local [local_rows(), D].
  void dispatch(const float* x_perm, int64_t D, float* x_local) const;
  // y_local [local_rows(), D] -> y_perm [disp.rows(), D].
  void combine(const float* y_local, int64_t D, float* y_perm) const;

 private:
  Backend be_;
  dist::Communicator& ep_;
  int64_t El_ = 0, P_ = 0, local_rows_ = 0;
  std::vector<int64_t> send_rows_;     // [P]: rows this rank sends to each rank
  std::vector<int64_t> send_first_;    // [P]: first row of x_perm going to rank q
  std::vector<int64_t> recv_rows_qe_;  // [P x El]: rows from rank q for local expert e
  std::vector<int64_t> recv_rows_q_;   // [P]: rows from rank q
  std::vector<int64_t> recv_first_q_;  // [P]: first received row from rank q (source-major)
  std::vector<int64_t> local_offsets_, local_blocks_;
  mutable std::vector<float> staging_;  // received rows in source-major order

  // Moves rows between the source-major and expert-major layouts of the received rows.
  void reorder(const float* src, int64_t D, float* dst, bool to_expert_major) const;
  // All-to-all of rows: `send_rows[q]` rows from row `send_first[q]` of `send` go to rank q.
  void exchange(const float* send, const std::vector<int64_t>& send_rows, const std::vector<int64_t>& send_first,
                float* recv, const std::vector<int64_t>& recv_rows, const std::vector<int64_t>& recv_first,
                int64_t D) const;
};

}  // namespace moe::model
