// Training checkpoints in Megatron-LM's `torch_dist` format (checkpoint/torch_dist.h: sharded
// keys, weights in the saved dtype, the fp32 masters and optimizer moments as Megatron's
// distributed optimizer stores them, fully sharded per parameter under
// optimizer.state.{fp32_param,exp_avg,exp_avg_sq}.<key>; common.pt holds args, iteration, the
// scheduler, the step and moectl's data position) or in its legacy `torch` format:
// DIR/iter_NNNNNNN/mp_rank_00/model_optim_rng.pt with `args`, `checkpoint_version`,
// `iteration`, `model` (canonical names, vocabulary padded, TE `_extra_state` entries) and
// optionally `optimizer` (torch's state_dict layout plus fp32 master weights; with the
// distributed optimizer Megatron's param groups only, the fp32 masters and moments flattened per
// grad buffer in distrib_optim.pt beside it), `opt_param_scheduler` and `rng_state` (with
// moectl's data position), then the tracker file, written last. With save_safetensors, DIR/checkpoint-N/ is also a
// complete HF directory.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "checkpoint/torch_dist.h"
#include "core/dtype.h"
#include "core/output_dir.h"
#include "dist/parallel_layout.h"
#include "model/train_model.h"
#include "train/data_loader.h"
#include "train/lr_schedule.h"
#include "train/optimizer.h"

namespace moe::train {

struct CheckpointOptions {
  DType dtype = DType::BF16;  // model weights as saved (fp32 masters go with the optimizer)
  bool save_optim = true, save_rng = true, save_safetensors = true;
  std::string source_dir;                                              // config.json and tokenizer files come from here
  checkpoint::CkptFormat format = checkpoint::CkptFormat::kTorchDist;  // --ckpt_format
  int thread_count = 2;  // torch_dist: .distcp files per writing rank, written at once
  // --use_distributed_optimizer: in the torch format the optimizer's parameter state goes into
  // distrib_optim.pt beside model_optim_rng.pt, as Megatron's DistributedOptimizer saves it.
  bool distributed_optimizer = false;
};

struct TrainProgress {
  int64_t iteration = 0;  // optimizer steps done
  int64_t consumed_samples = 0;
  int64_t skipped_iters = 0;
  LoaderPosition data;
};

// A save in steps, so that the ranks of a job write their own files into one iteration dir: the
// writer opens the iteration's staging dir, every writing rank puts its rank dir in it, then the
// writer finishes: the dir is published whole, then the side files and the HF copy, and last
// the tracker, so a crash at any point leaves the previous iteration the latest.
class CheckpointSave {
 public:
  CheckpointSave(const std::string& dir, int64_t iteration);
  const std::filesystem::path& staging() const { return staged_.path(); }
  // `hf_params` (global names, whole model) null: no HF copy. Returns its path, or "".
  std::string finish(const model::ModelConfig& config, const model::StateDict* hf_params,
                     const model::StateDict& buffers, const CheckpointOptions& o);

 private:
  std::string dir_;
  int64_t iteration_;
  StagedDir staged_;
};

// One rank's model_optim_rng.pt in `rank_dir` (made): `params` under the rank's own names (EP-local
// expert indices, as Megatron's per-rank files hold them) with their optimizer state; `layout` is
// the job's, recorded in the saved args. A pipeline stage's layers are numbered from 0 in the file
// (Megatron's stage-local numbering): `layer_offset` is the stage's first global layer.
void write_rank_file(const std::filesystem::path& rank_dir, const model::ModelConfig& config,
                     const dist::ParallelLayout& layout, const model::StateDict& params,
                     const model::StateDict& buffers, const Optimizer& opt, const LrScheduleConfig& lr,
                     const TrainProgress& p, const CheckpointOptions& o, int layer_offset = 0);

// torch_dist: one rank's chunks into the iteration's staging dir (`rank`: its world rank, naming
// its __RANK_I.distcp files; `params` under the rank's own names, experts EP-local on EP rank
// `ep_rank` of `ep_size`, dense tensors written by EP rank 0 only), their records beside them;
// rank 0 also writes common.pt. CheckpointSave::finish() then writes .metadata and metadata.json.
void write_dist_rank(const std::filesystem::path& iter_dir, int rank, int ep_rank, int ep_size,
                     const model::ModelConfig& config, const dist::ParallelLayout& layout,
                     const model::StateDict& params, const model::StateDict& buffers, const Optimizer& opt,
                     const LrScheduleConfig& lr, const TrainProgress& p, const CheckpointOptions& o);

// One process: writes iteration `p.iteration` into `dir` (which holds args.json). Returns the
// path of the HF copy when one was written, else "".
std::string save_checkpoint(const std::string& dir, const model::ModelConfig& config, const model::StateDict& params,
                            const model::StateDict& buffers, const Optimizer& opt, const LrScheduleConfig& lr,
                            const TrainProgress& p, const CheckpointOptions& o);

// What a Megatron dir's latest checkpoint adds to its weights for resuming: progress, and the
// optimizer state and fp32 masters (copied into `model` and `opt`) when present and wanted.
struct ResumeState {
  TrainProgress progress;
  bool had_optimizer = false, had_rng = false;
};
// `local_name` maps a checkpoint's (global) parameter name to the model's, nullopt for a tensor
// this rank does not hold (another EP rank's expert); absent: names are the model's.
// `to_local` (absent: none) turns a whole tensor of a checkpoint into this rank's slice (a tensor-parallel
// rank's part, by ShardSpec); it is applied where a checkpoint's tensor is larger than the model's.
// A legacy checkpoint written under TP or PP (args.json beside it records the layout) has every rank
// file's optimizer state merged into global tensors by that layout's ShardSpec first.
using ToLocal = std::function<Tensor(const std::string& name, const Tensor& whole)>;
ResumeState load_training_state(const std::string& dir, model::TrainModel& model, Optimizer& opt, bool load_optim,
                                bool load_rng,
                                const std::function<std::optional<std::string>(const std::string&)>& local_name = {},
                                const ToLocal& to_local = {});

}  // namespace moe::train
