// Pipeline-parallel schedules (DESIGN.md section 3): one rank's stage (model::TrainModel's) run
// over a global batch's micro-batches with Megatron-Core's non-interleaved 1F1B order — warm-up
// forwards, steady one-forward-one-backward, cool-down backwards — and a forward-only pass for
// evaluation. Activations go to the next stage and their gradients back to the previous one
// point to point over the pipeline group; the trainer calls these on every rank of a pipeline
// with the same micro-batches (every stage reads the same data, so message sizes are known).
// Under context parallelism they are the CP rank's rows of them: a pipeline joins the stages of
// one CP rank (Megatron's), so its stages cut the same rows and exchange those rows' activations.
#pragma once
#include <span>

#include "dist/communicator.h"
#include "model/train_model.h"

namespace moe::train {

// Time spent computing (forwards and backwards) and in the whole schedule, summed over calls:
// 1 - compute / total is this rank's pipeline bubble (waits included).
struct PipelineTimes {
  double compute_s = 0, total_s = 0;
};

// Forward and backward of every micro-batch through this rank's stage, gradients accumulated;
// the statistics this stage computed (the loss on the last stage, its layers' MoE numbers).
// `loss_scales`: each micro-batch's scale of its summed token losses (one per micro-batch).
// Deadlock-free with blocking sends: of two neighbours exchanging in one step, the earlier stage
// sends first and the later receives first.
model::StepStats run_1f1b(model::TrainModel& m, dist::Communicator& pp, std::span<const model::MicroBatchView> mbs,
                          std::span<const float> loss_scales, float aux_scale, PipelineTimes* times = nullptr);

// Forward only (evaluation): one statistics entry per micro-batch, this stage's part (its chunks'
// summed). Micro-batch by micro-batch through the chunks, any number of them.
std::vector<model::StepStats> run_forward(model::TrainModel& m, dist::Communicator& pp,
                                          std::span<const model::MicroBatchView> mbs);

// With virtual stages (the model's pp x vpp chunks, chunk k on stage k % pp): Megatron-Core's
// interleaved 1F1B (forward_backward_pipelining_with_interleaving). The micro-batches must be a
// multiple of the stages. Every step's sends and receives go as one batch (Communicator::exchange)
// around the ring of stages (the last stage feeds the first stage's next chunk); messages are
// [the batch's longest micro-batch, D].
model::StepStats run_interleaved(model::TrainModel& m, dist::Communicator& pp,
                                 std::span<const model::MicroBatchView> mbs, std::span<const float> loss_scales,
                                 float aux_scale, PipelineTimes* times = nullptr);

// Megatron's 1F1B warm-up: forwards before the first backward on stage `rank` of `stages`.
inline int warmup_forwards(int stages, int rank, int micro_batches) {
  return std::min(stages - rank - 1, micro_batches);
}

}  // namespace moe::train
