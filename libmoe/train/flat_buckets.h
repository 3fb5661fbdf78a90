// Megatron's overlapped communication of the data-parallel groups for one region of the flat
// buffers (train/parallel_optimizer.h), in buckets of consecutive parameters:
//  - --overlap_grad_reduce: a bucket's gradient reduction starts as soon as the step's last
//    backward has made all its parameters' gradients final, while the backward of earlier layers
//    goes on; finish_reduce() starts what is left and waits for every bucket.
//  - --overlap_param_gather (with the distributed optimizer): after the update every bucket's
//    parameters start travelling from their owners, and the next forward waits for a bucket only
//    when it reaches the first parameter in it.
//
// The flat buffers hold the layers in order and the backward runs them in reverse, so gradient
// buckets become ready from the end of the region towards its start, as Megatron's buckets
// (built in reverse parameter order) do; the forward needs them from the start. Every rank of the
// group holds the same parameters at the same offsets and reports them in the same order, so
// every rank starts the same collectives in the same order.
//
// Without the distributed optimizer each gradient bucket is all-reduced. With it, the region is
// sharded as DistributedOptimizer shards it (rank r owns [r*chunk, (r+1)*chunk), the last rank
// also the remainder): each bucket's part owned by rank q is reduced onto rank q (what the
// reduce-scatter gives in every rank's shard, with nothing staged) and broadcast from rank q.
#pragma once
#include <cstddef>
#include <memory>
#include <span>
#include <vector>

#include "dist/communicator.h"
#include "train/optimizer.h"

namespace moe::train {

class FlatBuckets {
 public:
  // `refs`: the region's parameters (views into `params` and `grads`), any order. `shard_chunk`
  // 0: replicated (all-reduce); else the distributed optimizer's equal chunk. A bucket closes at the
  // first parameter boundary past `bucket_elems` elements.
  FlatBuckets(std::span<float> params, std::span<float> grads, std::span<const ParamRef> refs,
              dist::Communicator& group, size_t shard_chunk, size_t bucket_elems);

  // A new step: every parameter's gradient pending again.
  void begin_reduce();
  // The parameter with gradient `grad` is final for this step (nothing if it is not in this
  // region); a bucket it completes starts. Also advances the buckets in flight.
  void grad_final(const float* grad);
  // Starts every bucket not started yet (parameters never reported: held back by the caller, e.g.
  // until a TP reduction) and waits for all.
  void finish_reduce();

  // After the distributed optimizer updated this rank's shard: every bucket's parameters start
  // travelling from their owners.
  void start_gather();
  // Before reading the parameter with data `param` (nothing if not in this region): its bucket's
  // gather finished. Also advances the buckets in flight.
  void param_needed(const float* param);
  // Every gather finished (before anything else reads the parameters).
  void finish_gather();

  int size() const { return int(buckets_.size()); }
  // Gradient buckets started before finish_reduce() in the last step (for the log).
  int reduced_early() const { return reduced_early_; }

 private:
  using Requests = std::vector<std::unique_ptr<dist::Communicator::Request>>;
  struct Bucket {
    size_t begin = 0, end = 0;  // [begin, end) of the region
    int params = 0, pending = 0;
    bool reducing = false;
    Requests gathers;  // in flight
  };
  std::span<float> params_, grads_;
  dist::Communicator& group_;
  size_t chunk_;
  std::vector<Bucket> buckets_;
  // Each parameter's bucket, by the address of its gradient and of its data.
  std::vector<std::pair<const float*, size_t>> by_grad_, by_param_;
  Requests reductions_;  // in flight
  int reduced_early_ = 0;
  void start_reduce(Bucket& b);
  void advance();  // MPI advances started collectives only inside its calls
  // Each owner's part [at, stop) of bucket `b`, in order.
  template <typename F>
  void for_each_owner(const Bucket& b, F&& f) const;
};

}  // namespace moe::train
