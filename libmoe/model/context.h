// What every module of the engine is handed (DESIGN.md section 3): where its ops run (the
// Backend), the workspace arena its temporaries are carved from, and this rank's local shapes,
// read from ShardSpec's layout. Nothing in model code is
// global: with one process the shapes are the whole model's and every process group is the
// local communicator, so the same code serves a rank of a tensor/expert/pipeline-parallel job.
#pragma once
#include <cstdint>
#include <memory>

#include "core/arena.h"
#include "dist/process_groups.h"
#include "kernels/backend.h"
#include "model/model_config.h"
#include "model/shard_spec.h"

namespace moe::model {

struct Context {
  Backend backend;
  LocalShapes local;
  // This rank's groups (tp, ep, dp, ...); shared by every module of the rank.
  std::shared_ptr<const dist::ProcessGroups> groups;
  // Temporaries of one forward or backward call (stack discipline: empty between calls), shared
  // by every module and micro-batch of the rank; the Stage sizes it before each call.
  std::shared_ptr<Arena> workspace;
};

// The tensor-parallel group's size (1 with one process).
inline int tp_size(const Context& ctx) { return ctx.groups ? ctx.groups->tp().size() : 1; }
// A row-parallel layer's partial sums (or a column-parallel layer's partial input gradient) summed
// over the tensor-parallel group, in place; nothing with one TP rank.
void tp_all_reduce(const Context& ctx, float* buf, int64_t n);

// A one-process CPU context for `c`.
Context single_process_context(const ModelConfig& c);

}  // namespace moe::model
