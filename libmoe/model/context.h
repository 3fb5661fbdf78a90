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
  // Megatron's sequence parallelism (with TP > 1): the residual stream between the layers' norms
  // and the tensor-parallel branches is split by rows over the TP group.
  bool sequence_parallel = false;
};

// The tensor-parallel group's size (1 with one process).
inline int tp_size(const Context& ctx) { return ctx.groups ? ctx.groups->tp().size() : 1; }
// A row-parallel layer's partial sums (or a column-parallel layer's partial input gradient) summed
// over the tensor-parallel group, in place; nothing with one TP rank.
void tp_all_reduce(const Context& ctx, float* buf, int64_t n);

// Sequence parallelism: rank r of the TP group holds rows [r Ts, (r + 1) Ts) of a micro-batch's
// T tokens padded with zero rows to TP x Ts (Ts = ceil(T / TP)). Without it, every rank holds all
// T rows and nothing below communicates.
inline bool sequence_parallel(const Context& ctx) { return ctx.sequence_parallel && tp_size(ctx) > 1; }
// The rows of the residual stream this rank holds (Ts under SP, else T).
int64_t seq_rows(const Context& ctx, int64_t T);
// The rows of a whole activation the TP branches read or write: TP x Ts under SP, else T.
int64_t full_rows(const Context& ctx, int64_t T);
// Every rank's Ts rows of `local` gathered into `full` ([full_rows, D]), in rank order.
void seq_all_gather(const Context& ctx, const float* local, int64_t T, int64_t D, float* full);
// A row-parallel output's (or column-parallel input gradient's) partial sums `full` ([full_rows,
// D], rows T.. zeroed here) summed over TP, this rank's rows into `local`.
void seq_reduce_scatter(const Context& ctx, float* full, int64_t T, int64_t D, float* local);
// This rank's rows of an activation every TP rank holds whole (`full`: T rows), zero past T.
void seq_take_rows(const Context& ctx, const float* full, int64_t T, int64_t D, float* local);

// MoE parallel folding with expert tensor parallelism 1 under TP > 1 (sequence parallelism on, as
// Megatron requires): each TP rank routes its own Ts rows and runs whole experts, exchanging
// tokens over the EP group, while the dense layers and the shared expert stay tensor-parallel.
// False with one TP rank or with the experts split over ETP = TP.
bool moe_routes_own_rows(const Context& ctx);

// A one-process CPU context for `c`.
Context single_process_context(const ModelConfig& c);

}  // namespace moe::model
