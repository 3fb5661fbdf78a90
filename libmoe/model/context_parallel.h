// Context parallelism (Megatron-Core's CP, cp_comm_type "all_gather"): the ranks of a CP group
// share every micro-batch, each holding some rows of every sequence, and only attention mixes
// rows: each rank's queries attend to the whole sequences' keys and values, all-gathered over the
// CP group in the forward, their gradients reduce-scattered back to their owners in the backward.
// Everything else (norms, MLP, router, experts, head) is per token and runs on the local rows.
// The trainer cuts micro-batches with cp_local_rows; attention calls the gather and the reduction.
//
// The split is Megatron's causal load balancing: a sequence padded to a multiple of 2 x CP is cut
// into 2 x CP equal chunks and rank r holds chunks r and 2 CP - 1 - r, so every rank has as much
// causal attention work. Swift pads each sequence to that multiple with ignored labels; here the
// padding positions are cut off the chunks instead of computed, so ranks may hold a few rows
// fewer, and nothing (the router's load statistics included) ever sees a padding token: the run
// equals the one-process run on any sequence lengths.
#pragma once
#include <array>
#include <cstdint>
#include <span>

#include "core/arena.h"
#include "model/batch.h"
#include "model/context.h"

namespace moe::model {

// The context-parallel group's size (1 with one process).
inline int cp_size(const Context& ctx) { return ctx.groups ? ctx.groups->cp().size() : 1; }
// Whether a batch is a CP rank's part of a micro-batch (it then carries the whole cu_seqlens).
inline bool cp_split(const Context& ctx, const Batch& b) { return cp_size(ctx) > 1 && !b.cp_cu_seqlens.empty(); }

// Positions [begin, end) of a sequence.
struct PositionRange {
  int32_t begin = 0, end = 0;
};
// The two chunks of a sequence of L tokens that rank `rank` of `cp` holds (either may be empty).
std::array<PositionRange, 2> cp_chunks(int64_t L, int cp, int rank);

// The rows of a micro-batch (its whole sequences' cu_seqlens, [S + 1]) that rank `rank` holds, in
// order: each sequence's two chunks, the sequences in order. Writes their row indices to `rows`
// and the rank's cu_seqlens ([S + 1]: every sequence, possibly empty) to `local_cu`, either may be
// null; returns the row count.
int64_t cp_local_rows(std::span<const int32_t> cu_seqlens, int cp, int rank, int64_t* rows, int32_t* local_cu);

// The workspace of gathering keys and values of a micro-batch's Tw tokens (ng groups of d
// channels) over `cp` ranks holding T of them here: the forward's whole keys and values, and in
// the backward also their gradients and the pieces every rank sends back.
struct CpAttentionScratch {
  std::span<float> k, v, dk, dv;  // [Tw, ng, d], the whole sequences in micro-batch order (dk, dv: backward)
  std::span<float> staging;       // [Tw, ng, d]: every rank's rows in rank order, on their way
  std::span<float> pieces;        // backward: [cp T, ng, d], each rank's gradient of this rank's rows
  std::span<int64_t> order;       // [Tw]: the micro-batch row of each row in rank order
  std::span<int64_t> counts;      // [4 cp]: the exchanges' counts and offsets
};
CpAttentionScratch carve_cp_attention_scratch(Arena& ws, int64_t T, int64_t Tw, int cp, int64_t ng, int64_t d,
                                              bool backward);

// Every CP rank's rows of `local_TGd` ([T, ng, d], this rank's part of b) put together into
// `whole_TGd` ([Tw, ng, d], micro-batch order). `s.order` and `s.counts` are filled on the way.
void cp_gather_rows(const Context& ctx, const Batch& b, const float* local_TGd, int64_t ng_d,
                    const CpAttentionScratch& s, float* whole_TGd);
// The reverse: `whole_TGd`'s rows (every rank's gradients of the whole sequences' keys or values)
// summed over the CP ranks into the rows this rank holds (`local_TGd`, overwritten). Needs the
// `s.order` and `s.counts` of a cp_gather_rows on the same batch.
void cp_reduce_rows(const Context& ctx, const Batch& b, const float* whole_TGd, int64_t ng_d,
                    const CpAttentionScratch& s, float* local_TGd);

}  // namespace moe::model
