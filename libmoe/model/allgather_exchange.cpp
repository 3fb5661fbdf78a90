#include "model/allgather_exchange.h"

#include "core/error.h"
#include "kernels/ops.h"

namespace moe::model {

AllGatherExchange::AllGatherExchange(const Backend& be, dist::Communicator& ep, int64_t T, int64_t K,
                                     std::span<const int32_t> expert_TK, std::span<const float> weight_TK,
                                     int64_t experts_per_rank)
    : be_(be), ep_(ep), T_(T) {
  MOE_ASSERT(int64_t(expert_TK.size()) == T * K && int64_t(weight_TK.size()) == T * K,
             "allgather exchange: routing of {} slots for {} tokens x top-{}", expert_TK.size(), T, K);
  const size_t P = size_t(ep.size());
  tokens_.assign(P, 0), first_.assign(P, 0);
  ep_.all_gather(&T_, tokens_.data(), 1, dist::DataType::kI64);
  for (size_t q = 1; q < P; ++q) first_[q] = first_[q - 1] + tokens_[q - 1];
  total_ = first_[P - 1] + tokens_[P - 1];
  local_.T = total_, local_.K = K;
  local_.expert_TK.resize(size_t(total_ * K)), local_.weight_TK.resize(size_t(total_ * K));
  std::vector<int32_t> all_ids(local_.expert_TK.size());
  gather_raw(expert_TK.data(), K, dist::DataType::kI32, all_ids.data());
  gather_raw(weight_TK.data(), K, dist::DataType::kF32, local_.weight_TK.data());
  const int64_t first = int64_t(ep.rank()) * experts_per_rank;
  for (size_t i = 0; i < all_ids.size(); ++i) {
    const int64_t e = all_ids[i];
    local_.expert_TK[i] = e >= first && e < first + experts_per_rank ? int32_t(e - first) : -1;
  }
}

void AllGatherExchange::gather_raw(const void* rows, int64_t W, dist::DataType dt, void* all) const {
  const size_t P = size_t(ep_.size());
  std::vector<int64_t> sc(P, T_ * W), so(P, 0), rc(P), ro(P);
  for (size_t q = 0; q < P; ++q) rc[q] = tokens_[q] * W, ro[q] = first_[q] * W;
  ep_.all_to_all(rows, sc, so, all, rc, ro, dt);
}

void AllGatherExchange::gather(const float* rows, int64_t W, float* all) const {
  gather_raw(rows, W, dist::DataType::kF32, all);
}

void AllGatherExchange::reduce_scatter(const float* all, int64_t W, float* out) const {
  const size_t P = size_t(ep_.size());
  std::vector<int64_t> sc(P), so(P), rc(P, T_ * W), ro(P);
  for (size_t q = 0; q < P; ++q) sc[q] = tokens_[q] * W, so[q] = first_[q] * W, ro[q] = int64_t(q) * T_ * W;
  staging_.resize(P * size_t(T_ * W));
  ep_.all_to_all(all, sc, so, staging_.data(), rc, ro, dist::DataType::kF32);
  ops::copy(be_, out, staging_.data(), T_ * W);
  for (size_t q = 1; q < P; ++q) ops::add(be_, out, staging_.data() + q * size_t(T_ * W), T_ * W);
}

}  // namespace moe::model
