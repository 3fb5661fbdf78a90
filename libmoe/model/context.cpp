#include "model/context.h"

#include <algorithm>

#include "core/error.h"
#include "kernels/ops.h"
#include "model/rank_state.h"

namespace moe::model {

void tp_all_reduce(const Context& ctx, float* buf, int64_t n) {
  if (tp_size(ctx) > 1) ctx.groups->tp().all_reduce(buf, n, dist::DataType::kF32, dist::ReduceOp::kSum);
}

int64_t seq_rows(const Context& ctx, int64_t T) {
  const int64_t tp = tp_size(ctx);
  return sequence_parallel(ctx) ? (T + tp - 1) / tp : T;
}

int64_t full_rows(const Context& ctx, int64_t T) {
  return seq_rows(ctx, T) * (sequence_parallel(ctx) ? tp_size(ctx) : 1);
}

void seq_all_gather(const Context& ctx, const float* local, int64_t T, int64_t D, float* full) {
  MOE_ASSERT(sequence_parallel(ctx), "sequence-parallel all-gather without sequence parallelism");
  ctx.groups->tp().all_gather(local, full, seq_rows(ctx, T) * D, dist::DataType::kF32);
}

void seq_reduce_scatter(const Context& ctx, float* full, int64_t T, int64_t D, float* local) {
  MOE_ASSERT(sequence_parallel(ctx), "sequence-parallel reduce-scatter without sequence parallelism");
  ops::fill(ctx.backend, full + T * D, 0.0f, (full_rows(ctx, T) - T) * D);
  ctx.groups->tp().reduce_scatter(full, local, seq_rows(ctx, T) * D, dist::DataType::kF32, dist::ReduceOp::kSum);
}

void seq_take_rows(const Context& ctx, const float* full, int64_t T, int64_t D, float* local) {
  const int64_t ts = seq_rows(ctx, T), begin = ctx.groups->tp().rank() * ts;
  const int64_t n = std::clamp<int64_t>(T - begin, 0, ts);
  ops::copy(ctx.backend, local, full + begin * D, n * D);
  ops::fill(ctx.backend, local + n * D, 0.0f, (ts - n) * D);
}

bool moe_routes_own_rows(const Context& ctx) {
  if (tp_size(ctx) == 1 || ctx.groups->layout().etp == tp_size(ctx)) return false;
  MOE_ASSERT(ctx.groups->layout().etp == 1 && sequence_parallel(ctx),
             "expert tensor parallelism {} under tensor parallelism {} needs ETP 1 and sequence parallelism",
             ctx.groups->layout().etp, tp_size(ctx));
  return true;
}

Context single_process_context(const ModelConfig& c) {
  const ShardSpec spec = single_process_spec(c);
  return {Backend{}, spec.local_shapes(0, 0, 0),
          std::make_shared<const dist::ProcessGroups>(dist::ProcessGroups::local()), std::make_shared<Arena>()};
}

}  // namespace moe::model
