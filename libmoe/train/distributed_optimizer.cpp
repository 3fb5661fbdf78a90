#include "train/distributed_optimizer.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace moe::train {

DistributedOptimizer::DistributedOptimizer(const OptimizerConfig& cfg, std::span<float> params, std::span<float> grads,
                                           std::span<const ParamRef> refs, dist::Communicator& dp,
                                           const std::function<bool(const std::string&)>& counted_in_norm)
    : params_(params), grads_(grads), dp_(dp), shard_opt_(cfg) {
  MOE_ASSERT(params.size() == grads.size(), "distributed optimizer: {} parameters but {} gradients", params.size(),
             grads.size());
  const size_t n = params.size(), r = size_t(dp.rank()), size = size_t(dp.size());
  MOE_ASSERT(n >= size, "distributed optimizer: {} parameters over {} ranks", n, size);
  chunk_ = n / size;
  begin_ = r * chunk_;
  end_ = r + 1 == size ? n : begin_ + chunk_;
  // Pieces of ~32 MB over all ranks (at least one element each).
  piece_ = std::max<size_t>(1, std::min(chunk_, (size_t(8) << 20) / size));
  staging_.resize(piece_ * (size + 1));
  all_ = in_address_order(refs);
  for (const ParamRef& p : all_) {
    const size_t off = size_t(p.data - params.data());
    MOE_ASSERT(off + p.numel <= n && p.grad == grads.data() + off, "{} is not a view of the flat buffers", p.name);
    const size_t lo = std::max(off, begin_), hi = std::min(off + p.numel, end_);
    if (lo >= hi) continue;
    pieces_.push_back({p.name, params.data() + lo, grads.data() + lo, hi - lo, p.decay});
    piece_offset_.push_back(lo - off);
    if (!counted_in_norm || counted_in_norm(p.name)) counted_pieces_.push_back(pieces_.back());
  }
  shard_opt_.bind(pieces_);
}

double DistributedOptimizer::reduce_gradients() {
  const size_t n = grads_.size(), size = size_t(dp_.size());
  // Piece by piece: every rank's part staged contiguously, reduce-scattered into this rank's shard
  // of the gradient buffer (a later piece reads none of what an earlier one wrote).
  for (size_t o = 0; o < chunk_; o += piece_) {
    const size_t c = std::min(piece_, chunk_ - o);
    for (size_t q = 0; q < size; ++q)
      std::memcpy(staging_.data() + q * c, grads_.data() + q * chunk_ + o, c * sizeof(float));
    dp_.reduce_scatter(staging_.data(), grads_.data() + begin_ + o, int64_t(c), dist::DataType::kF32,
                       dist::ReduceOp::kSum);
  }
  if (const size_t tail = n - chunk_ * size; tail > 0)  // in place: the last rank's shard ends with it
    dp_.all_reduce(grads_.data() + chunk_ * size, int64_t(tail), dist::DataType::kF32, dist::ReduceOp::kSum);
  return shard_sum_of_squares();
}

void DistributedOptimizer::scale_gradients(float factor) { scale_grads(pieces_, factor); }

bool DistributedOptimizer::step_stays_finite(double lr, double grad_bound) {
  return shard_opt_.step_stays_finite(pieces_, lr, grad_bound);
}

void DistributedOptimizer::apply_step(double lr, bool gather) {
  shard_opt_.apply_step(pieces_, lr);
  if (gather) all_gather_flat(params_.data());
}

void DistributedOptimizer::all_gather_flat(float* v) const {
  const size_t n = params_.size(), size = size_t(dp_.size());
  // Piece by piece through the staging buffer (send and receive must not overlap in MPI).
  for (size_t o = 0; o < chunk_; o += piece_) {
    const size_t c = std::min(piece_, chunk_ - o);
    float* mine = staging_.data() + size * piece_;
    std::memcpy(mine, v + begin_ + o, c * sizeof(float));
    dp_.all_gather(mine, staging_.data(), int64_t(c), dist::DataType::kF32);
    for (size_t q = 0; q < size; ++q)
      if (q != size_t(dp_.rank())) std::memcpy(v + q * chunk_ + o, staging_.data() + q * c, c * sizeof(float));
  }
  if (const size_t tail = n - chunk_ * size; tail > 0)
    dp_.broadcast(v + chunk_ * size, int64_t(tail), dist::DataType::kF32, int(size) - 1);
}

void DistributedOptimizer::gather_state(Optimizer& full) const {
  if (!full.bound()) full.bind(all_);
  full.set_steps(shard_opt_.steps());
  if (!shard_opt_.has_state()) return;
  std::vector<float> flat(params_.size());
  for (const auto& key : shard_opt_.state_keys()) {
    const auto mine = shard_opt_.flat_state(key);
    std::copy(mine.begin(), mine.end(), flat.begin() + std::ptrdiff_t(begin_));
    all_gather_flat(flat.data());
    for (const ParamRef& p : all_) {
      auto dst = full.state(p.name, key);
      std::copy_n(flat.begin() + (p.data - params_.data()), dst.size(), dst.begin());
    }
  }
}

void DistributedOptimizer::load_state(const Optimizer& full) {
  shard_opt_.set_steps(full.steps());
  if (!full.has_state()) return;
  for (const auto& key : shard_opt_.state_keys())
    for (size_t i = 0; i < pieces_.size(); ++i) {
      const auto src = full.state(pieces_[i].name, key);
      auto dst = shard_opt_.state(pieces_[i].name, key);
      std::copy_n(src.begin() + std::ptrdiff_t(piece_offset_[i]), dst.size(), dst.begin());
    }
}

}  // namespace moe::train
