#include "model/expert_exchange.h"

#include "core/error.h"
#include "kernels/ops.h"

namespace moe::model {

ExpertExchange::ExpertExchange(const Backend& be, const TokenDispatcher& disp, dist::Communicator& ep,
                               int64_t experts_per_rank)
    : be_(be), ep_(ep), El_(experts_per_rank), P_(ep.size()) {
  const int64_t E = disp.num_experts();
  MOE_ASSERT(E == P_ * El_, "expert exchange: {} experts are not {} EP ranks x {}", E, P_, El_);
  const size_t P = size_t(P_), El = size_t(El_);
  send_rows_.assign(P, 0), send_first_.assign(P, 0);
  std::vector<int64_t> blocks(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) blocks[size_t(e)] = disp.block(e);
  for (size_t q = 0; q < P; ++q) {
    send_first_[q] = El > 0 ? disp.offset(int64_t(q * El)) : 0;
    for (size_t e = 0; e < El; ++e) send_rows_[q] += blocks[q * El + e];
  }
  // Every rank learns how many rows each peer sends to each of its local experts.
  recv_rows_qe_.assign(P * El, 0);
  std::vector<int64_t> per_peer(P, int64_t(El)), offs(P);
  for (size_t q = 0; q < P; ++q) offs[q] = int64_t(q * El);
  ep_.all_to_all(blocks.data(), per_peer, offs, recv_rows_qe_.data(), per_peer, offs, dist::DataType::kI64);
  recv_rows_q_.assign(P, 0), recv_first_q_.assign(P, 0);
  local_blocks_.assign(El, 0), local_offsets_.assign(El, 0);
  for (size_t q = 0; q < P; ++q) {
    for (size_t e = 0; e < El; ++e)
      recv_rows_q_[q] += recv_rows_qe_[q * El + e], local_blocks_[e] += recv_rows_qe_[q * El + e];
    if (q > 0) recv_first_q_[q] = recv_first_q_[q - 1] + recv_rows_q_[q - 1];
  }
  for (size_t e = 1; e < El; ++e) local_offsets_[e] = local_offsets_[e - 1] + local_blocks_[e - 1];
  for (size_t e = 0; e < El; ++e) local_rows_ += local_blocks_[e];
}

void ExpertExchange::exchange(const float* send, const std::vector<int64_t>& send_rows,
                              const std::vector<int64_t>& send_first, float* recv,
                              const std::vector<int64_t>& recv_rows, const std::vector<int64_t>& recv_first,
                              int64_t D) const {
  const size_t P = size_t(P_);
  std::vector<int64_t> sc(P), so(P), rc(P), ro(P);
  for (size_t q = 0; q < P; ++q)
    sc[q] = send_rows[q] * D, so[q] = send_first[q] * D, rc[q] = recv_rows[q] * D, ro[q] = recv_first[q] * D;
  ep_.all_to_all(send, sc, so, recv, rc, ro, dist::DataType::kF32);
}

void ExpertExchange::reorder(const float* src, int64_t D, float* dst, bool to_expert_major) const {
  const size_t P = size_t(P_), El = size_t(El_);
  std::vector<int64_t> next_local(local_offsets_);  // expert-major cursor per local expert
  for (size_t q = 0; q < P; ++q) {
    int64_t source_major = recv_first_q_[q];
    for (size_t e = 0; e < El; ++e) {
      const int64_t n = recv_rows_qe_[q * El + e];
      const int64_t expert_major = next_local[e];
      if (to_expert_major) ops::copy(be_, dst + expert_major * D, src + source_major * D, n * D);
      else ops::copy(be_, dst + source_major * D, src + expert_major * D, n * D);
      source_major += n, next_local[e] += n;
    }
  }
}

void ExpertExchange::dispatch(const float* x_perm, int64_t D, float* x_local) const {
  staging_.resize(size_t(local_rows_ * D));
  exchange(x_perm, send_rows_, send_first_, staging_.data(), recv_rows_q_, recv_first_q_, D);
  reorder(staging_.data(), D, x_local, true);
}

void ExpertExchange::combine(const float* y_local, int64_t D, float* y_perm) const {
  staging_.resize(size_t(local_rows_ * D));
  reorder(y_local, D, staging_.data(), false);
  exchange(staging_.data(), recv_rows_q_, recv_first_q_, y_perm, send_rows_, send_first_, D);
}

}  // namespace moe::model
