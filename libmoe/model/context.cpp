#include "model/context.h"

#include "model/rank_state.h"

namespace moe::model {

void tp_all_reduce(const Context& ctx, float* buf, int64_t n) {
  if (tp_size(ctx) > 1) ctx.groups->tp().all_reduce(buf, n, dist::DataType::kF32, dist::ReduceOp::kSum);
}

Context single_process_context(const ModelConfig& c) {
  const ShardSpec spec = single_process_spec(c);
  return {Backend{}, spec.local_shapes(0, 0, 0),
          std::make_shared<const dist::ProcessGroups>(dist::ProcessGroups::local()), std::make_shared<Arena>()};
}

}  // namespace moe::model
