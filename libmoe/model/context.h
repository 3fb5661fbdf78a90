// What every module of the engine is handed (DESIGN.md section 3): where its ops run (the
// Backend), and this rank's local shapes, read from ShardSpec's layout. Nothing in model code is
// global: with one process the shapes are the whole model's and every process group is the
// local communicator, so the same code serves a rank of a tensor/expert/pipeline-parallel job.
#pragma once
#include <cstdint>
#include <memory>

#include "dist/process_groups.h"
#include "kernels/backend.h"
#include "model/model_config.h"
#include "model/shard_spec.h"

namespace moe::model {

struct LocalShapes {
  int64_t heads = 0, query_groups = 0;      // attention heads and key/value groups on this TP rank
  int64_t expert_begin = 0, experts = 0;    // this EP rank's experts [begin, begin + experts)
  int64_t vocab_begin = 0, vocab_rows = 0;  // this TP rank's rows of the (padded) vocabulary
  int layer_begin = 0, layers = 0;          // this pipeline stage's layers
};

// The shapes rank (tp, pp, ep) of `spec`'s layout holds. With the one-rank layout, the whole
// model (vocabulary unpadded: the engine reads the model's own rows).
LocalShapes local_shapes(const ModelConfig& c, const ShardSpec& spec, int tp_rank, int pp_rank, int ep_rank);

struct Context {
  Backend backend;
  LocalShapes local;
  // This rank's groups (tp, ep, dp, ...); shared by every module of the rank.
  std::shared_ptr<const dist::ProcessGroups> groups;
};

// A one-process CPU context for `c`.
Context single_process_context(const ModelConfig& c);

}  // namespace moe::model
