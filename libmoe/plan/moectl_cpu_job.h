// moectl's own CPU engine run as a distributed job (mpirun, one thread per rank): each rank's peak
// memory and step time for a layout, from the engine's own accounting (ShardSpec's local shapes,
// the Stage's workspace sizes, the optimizer's shards and staging, the pipeline schedules' slots).
// `moectl plan --moectl_cpu_layout` prints it; tests/plan/plan_practice_test.py runs the same
// layouts under mpirun and compares. The one-process Engine::kMoectlCpu of memory_model.h is the
// GPU planner's view of the same engine; this one knows ranks.
#pragma once
#include <vector>

#include "dist/parallel_layout.h"
#include "model/model_config.h"
#include "model/train_options.h"

namespace moe::plan {

struct CpuJob {
  dist::ParallelLayout layout;  // validated; vpp > 1 needs micro-batches a multiple of pp
  int micro_batch_size = 1;
  int64_t seq_length = 2048, global_batch_size = 16;
  model::TrainOptions options;  // recompute, sequence parallel (with tp > 1), MoE options
  bool distributed_optimizer = true;
  int threads = 1;  // worker threads per rank (each keeps the attention kernel's buffers)
  int64_t micro_batches() const { return global_batch_size / (int64_t(micro_batch_size) * layout.dp); }
};

// Bytes one rank holds, grown from its resident memory before the weights existed (the trainer's
// "[Rank r] ... at start" line).
struct CpuRankMemory {
  int rank = 0, tp = 0, pp = 0, ep = 0, dp = 0;  // coordinates (dp: in the dense data-parallel group)
  double dense_params = 0, expert_params = 0;    // parameters on this rank (fp32)
  double weights = 0, gradients = 0, optimizer = 0;
  double activations = 0;   // the micro-batch arenas of every slot the schedule keeps, touched pages
  double workspace = 0;     // the shared workspace arena's touched pages
  double kernels = 0;       // the kernels' per-thread buffers and the EP rows outside the arenas
  double comm_buffers = 0;  // distributed-optimizer staging, MPI's reduce-scatter copy, PP messages
  double load = 0;          // while the model is built: every rank's whole initial state + its slices
  double train() const { return weights + gradients + optimizer + activations + workspace + kernels + comm_buffers; }
  double peak() const { return train() > load ? train() : load; }
  double params() const { return dense_params + expert_params; }
};

// Every rank of the job, in world-rank order (Megatron's tp-cp-ep-dp-pp order). InputError when
// the model does not divide over the layout.
std::vector<CpuRankMemory> moectl_cpu_job_memory(const model::ModelConfig& c, const CpuJob& job);

// What the time model is calibrated with: the seconds of one step of the same model and batch on
// one process (measured while as many processes as the job has ranks keep the machine busy), and
// the links between ranks.
struct CpuRates {
  double one_process_step_s = 0;
  double link_gbps = 4;                 // bytes per second of a collective's payload, in GB/s
  double collective_latency_s = 50e-6;  // each collective's fixed cost (a rendezvous of its ranks)
};

struct CpuRankTime {
  int rank = 0;
  double compute_s = 0;    // this rank's forward and backward work of the step
  double optimizer_s = 0;  // AdamW over its (shard of the) parameters
  double comm_s = 0;       // its collectives and point-to-point messages
  double bubble_s = 0;     // pipeline idle time (1F1B / interleaved, unequal stages)
  int64_t collectives = 0;
  double comm_bytes = 0;
  double step_s = 0;  // the job's step: its slowest rank's
};

// Every rank's step time; InputError without a positive one-process step time.
std::vector<CpuRankTime> moectl_cpu_job_time(const model::ModelConfig& c, const CpuJob& job, const CpuRates& r);

}  // namespace moe::plan
