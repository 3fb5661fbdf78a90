// The engine's weights come from ShardSpec, the one sharding rule (DESIGN.md section 1): this
// rank's slice of every canonical tensor, under its rank-local name (stage-local layer numbers,
// EP-local expert indices). With the one-rank layout that is every tensor itself, no copy; a
// tensor/pipeline/expert-parallel rank gets its part through the same call.
#pragma once
#include "model/shard_spec.h"
#include "model/state_dict.h"

namespace moe::model {

// `full`: the canonical state with the model's own vocabulary rows (padded here to the
// layout's padded vocabulary when it needs it). InputError naming a tensor the state lacks.
StateDict rank_state(const ShardSpec& spec, const ModelConfig& c, const StateDict& full, int tp_rank, int pp_rank,
                     int ep_rank);

// The layout of a one-process run.
ShardSpec single_process_spec(const ModelConfig& c);

}  // namespace moe::model
