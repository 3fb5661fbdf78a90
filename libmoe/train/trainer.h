// The training loop of `moectl pt` / `moectl sft`, on one process or as one rank of a
// data-parallel job: micro-batches accumulated into global batches, loss normalised over the
// global batch's label tokens (Megatron's per-token loss) or per micro-batch, auxiliary MoE losses averaged over
// micro-batches, gradient clipping, a step skipped and counted when the loss or gradient norm is
// not finite, LR schedule, logging, evaluation, checkpoints and plots.
//
// Data parallelism: every rank reads the global batch in the single process's order and runs
// the micro-batches j with j % DP == its DP rank (Megatron's sampler gives DP rank r the r-th
// micro-batch-sized slice of every DP x micro-batch rows); gradients and the step's statistics
// are summed over the DP group, so every rank clips, skips and steps identically and the result
// is the single-process one up to the order of the sums. Only the writer rank writes files.
//
// Context parallelism: the ranks of a CP group run the same micro-batches, each its rows of every
// sequence (model/context_parallel.h); gradients and token statistics are summed over DP x CP,
// and the loss scales count the whole micro-batches' tokens, so the sums are the one process's.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dist/process_groups.h"
#include "model/train_model.h"
#include "train/checkpoint.h"
#include "train/dataset.h"
#include "train/lr_schedule.h"
#include "train/optimizer.h"
#include "train/parallel_optimizer.h"

namespace moe::train {

// What the loop reports after each iteration, for the app's progress bar.
struct IterationReport {
  int64_t iteration = 0, total = 0;
  double elapsed_s = 0, loss = 0, lr = 0;
  // The logging.jsonl lines this iteration wrote (train and/or eval); empty on most iterations.
  std::vector<nlohmann::json> lines;
};

struct TrainerConfig {
  int64_t train_iters = 0;  // 0: from max_epochs
  int max_epochs = 1;
  int micro_batch_size = 1, global_batch_size = 16;
  bool packing = false;
  int max_length = 2048;
  // --calculate_per_token_loss: true (swift's default) divides the global batch's summed token
  // losses by its label tokens; false is Megatron's per-micro-batch average: each micro-batch's
  // mean loss, averaged over the global batch's micro-batches (over every DP rank). Either way the
  // logged loss is the global batch's token-weighted mean (Megatron reports the summed loss and
  // token count in both modes).
  bool calculate_per_token_loss = true;
  uint64_t seed = 42;
  LrScheduleConfig lr;
  OptimizerConfig optim;
  double clip_grad = 1.0;
  int log_interval = 5, eval_interval = 500, eval_iters = -1, save_interval = 500;
  std::string out_dir;  // the versioned run directory
  CheckpointOptions ckpt;
  bool save = true;
  // Resuming (--load without --finetune): continue from this Megatron dir's state.
  std::string resume_dir;
  bool load_optim = true, load_rng = true;
  // When set, called after every iteration and the caller shows the lines (a progress bar on a
  // terminal); otherwise each line goes to the log.
  std::function<void(const IterationReport&)> on_iteration;
  // The rank's process groups; null: one process.
  std::shared_ptr<const dist::ProcessGroups> groups;
  // Whether this rank writes logging.jsonl, plots and checkpoints (world rank 0).
  bool writer = true;
  // --use_distributed_optimizer: with DP > 1, the optimizer state sharded over the DP group.
  bool distributed_optimizer = false;
  // --overlap_grad_reduce, --overlap_param_gather, --ddp_bucket_size.
  CommOverlap overlap;
  // TensorBoard event files go here ("": none).
  std::string tensorboard_dir;
  // Megatron's TensorBoard options: its per-iteration tags ("lm loss", "learning-rate",
  // "grad-norm", ... and each "... vs samples") every this many iterations, beside the
  // train/<key> and eval/<key> copies of logging.jsonl's lines.
  struct TensorBoardOptions {
    int log_interval = 1;         // --tensorboard_log_interval
    bool learning_rate = true;    // not --no_log_learning_rate_to_tensorboard
    bool timers = false;          // --log_timers_to_tensorboard: iteration-time
    bool memory = false;          // --log_memory_to_tensorboard: mem-max-allocated-bytes (peak RSS)
    bool validation_ppl = false;  // --log_validation_ppl_to_tensorboard
    bool throughput = true;       // --log_throughput: throughput (TFLOP/s per process)
    bool params_norm = false;     // --log_params_norm: params-norm (and params_norm in the log)
  } tensorboard;
};

struct TrainResult {
  int64_t iterations = 0, skipped = 0;
  double last_loss = 0, best_eval_loss = 0;
  std::string last_checkpoint, best_checkpoint;
  // Pipeline parallelism: this rank's stage, the micro-batches per pipeline and global batch, and
  // its schedule's compute and total seconds (1 - compute / total: the bubble, waits included).
  int pipeline_stage = 0, pipeline_stages = 1, pipeline_micro_batches = 0, pipeline_chunks = 1;
  double pipeline_compute_s = 0, pipeline_total_s = 0;
  std::vector<double> pipeline_stage_compute_s;  // every stage's compute seconds, in stage order
  // --overlap_grad_reduce: this rank's gradient buckets whose reduction started during the last
  // step's backward, and all of them.
  int buckets_overlapped = 0, buckets = 0;
  // This rank's peak resident memory when the last iteration ended (before the final evaluation
  // and checkpoint): what the training steps needed.
  double train_peak_rss_gib = 0;
};

// Runs the loop; `model` starts from the loaded or initialised weights.
TrainResult run_training(const TrainerConfig& cfg, model::TrainModel& model, const Datasets& data);

// Megatron-SWIFT's iteration count for --max_epochs: whole global batches over the epochs, the
// rows of an epoch cut to a multiple of micro_batch_size x DP.
int64_t iterations_for_epochs(int64_t rows_per_epoch, int micro_batch_size, int global_batch_size, int epochs,
                              int data_parallel_size = 1);

}  // namespace moe::train
