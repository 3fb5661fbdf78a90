#include "train/flat_buckets.h"

#include <algorithm>

#include "core/error.h"

namespace moe::train {

namespace {

// The bucket of the parameter at address `p` in a sorted (address, bucket) list; npos: not there.
size_t find_bucket(const std::vector<std::pair<const float*, size_t>>& list, const float* p) {
  const auto it = std::lower_bound(list.begin(), list.end(), std::make_pair(p, size_t(0)));
  return it != list.end() && it->first == p ? it->second : size_t(-1);
}

}  // namespace

FlatBuckets::FlatBuckets(std::span<float> params, std::span<float> grads, std::span<const ParamRef> refs,
                         dist::Communicator& group, size_t shard_chunk, size_t bucket_elems)
    : params_(params), grads_(grads), group_(group), chunk_(shard_chunk) {
  MOE_ASSERT(params.size() == grads.size(), "{} parameters but {} gradients", params.size(), grads.size());
  const std::vector<ParamRef> ordered = in_address_order(refs);
  for (const ParamRef& p : ordered) {
    const size_t off = size_t(p.data - params.data());
    MOE_ASSERT(off + p.numel <= params.size() && p.grad == grads.data() + off, "{} is not a view of the region",
               p.name);
    if (buckets_.empty() || buckets_.back().end - buckets_.back().begin >= bucket_elems) {
      buckets_.emplace_back();
      buckets_.back().begin = buckets_.size() == 1 ? 0 : buckets_[buckets_.size() - 2].end;
    }
    Bucket& b = buckets_.back();
    b.end = off + p.numel, b.params += 1;
    by_grad_.emplace_back(p.grad, buckets_.size() - 1);
    by_param_.emplace_back(p.data, buckets_.size() - 1);
  }
  if (!buckets_.empty()) buckets_.back().end = params.size();  // the region's tail too
  std::sort(by_grad_.begin(), by_grad_.end());
  std::sort(by_param_.begin(), by_param_.end());
  begin_reduce();
}

template <typename F>
void FlatBuckets::for_each_owner(const Bucket& b, F&& f) const {
  const size_t last = size_t(group_.size()) - 1;
  for (size_t at = b.begin; at < b.end;) {
    const size_t owner = std::min(at / chunk_, last);
    const size_t stop = owner == last ? b.end : std::min(b.end, (owner + 1) * chunk_);
    f(at, stop, int(owner));
    at = stop;
  }
}

void FlatBuckets::advance() {
  for (auto& r : reductions_) r->test();
  for (Bucket& b : buckets_)
    for (auto& r : b.gathers) r->test();
}

void FlatBuckets::begin_reduce() {
  MOE_ASSERT(reductions_.empty(), "a new step before the last one's gradient reduction finished");
  for (Bucket& b : buckets_) b.pending = b.params, b.reducing = false;
  reduced_early_ = 0;
}

void FlatBuckets::grad_final(const float* grad) {
  const size_t i = find_bucket(by_grad_, grad);
  if (i == size_t(-1)) return;
  Bucket& b = buckets_[i];
  MOE_ASSERT(b.pending > 0, "a gradient reported final twice in one step");
  if (--b.pending == 0) start_reduce(b), ++reduced_early_;
  advance();
}

void FlatBuckets::start_reduce(Bucket& b) {
  b.reducing = true;
  float* base = grads_.data();
  if (chunk_ == 0) {
    reductions_.push_back(
        group_.start_all_reduce(base + b.begin, int64_t(b.end - b.begin), dist::DataType::kF32, dist::ReduceOp::kSum));
    return;
  }
  for_each_owner(b, [&](size_t at, size_t stop, int owner) {
    reductions_.push_back(
        group_.start_reduce(base + at, int64_t(stop - at), dist::DataType::kF32, dist::ReduceOp::kSum, owner));
  });
}

void FlatBuckets::finish_reduce() {
  // Later buckets first, the order the backward makes them ready in.
  for (auto b = buckets_.rbegin(); b != buckets_.rend(); ++b)
    if (!b->reducing) start_reduce(*b);
  for (auto& r : reductions_) r->wait();
  reductions_.clear();
}

void FlatBuckets::start_gather() {
  MOE_ASSERT(chunk_ > 0, "the parameter gather needs the distributed optimizer's shards");
  for (Bucket& b : buckets_) {
    MOE_ASSERT(b.gathers.empty(), "a parameter gather started twice");
    for_each_owner(b, [&](size_t at, size_t stop, int owner) {
      b.gathers.push_back(group_.start_broadcast(params_.data() + at, int64_t(stop - at), dist::DataType::kF32, owner));
    });
  }
}

void FlatBuckets::param_needed(const float* param) {
  const size_t i = find_bucket(by_param_, param);
  if (i == size_t(-1)) return;
  for (auto& r : buckets_[i].gathers) r->wait();
  buckets_[i].gathers.clear();
  advance();
}

void FlatBuckets::finish_gather() {
  for (Bucket& b : buckets_) {
    for (auto& r : b.gathers) r->wait();
    b.gathers.clear();
  }
}

}  // namespace moe::train
