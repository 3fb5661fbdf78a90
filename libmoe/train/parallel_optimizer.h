// The optimizer step of one rank of a data- and expert-parallel job (or of one process): from the
// gradients the rank's micro-batches accumulated to updated weights on every rank.
//
// The model's flat buffers have two regions (model/train_model.h): dense parameters, replicated
// on every data-parallel and context-parallel rank and reduced over the DP x CP group; and this
// rank's experts, replicated over the expert-data-parallel group (EDP, which folds CP in) and
// reduced over it. Under tensor parallelism each rank holds its TP slices; the parameters TP does
// not split (norms, router, gates) end with equal gradients on every TP rank (summed over TP first
// where each rank saw only its rows: the norms under sequence parallelism, the router under MoE
// parallel folding), and the norm counts them once. Under folding (ETP 1) each TP rank holds whole
// experts of its own EP rank, reduced over an EDP group of world / (EP x PP) ranks. Each region is
// stepped by a replicated optimizer or, with --use_distributed_optimizer, by a DistributedOptimizer
// sharded over its group. The gradient norm is the whole model's (every rank's shard of every
// region), and a step that would make any rank's weights non-finite is skipped on every rank.
//
// Under pipeline parallelism each stage holds its layers: the norm and the skip decision are
// summed over the pipeline group; with tied embeddings the first stage's embedding and the last
// stage's output copy get the sum of both gradients (Megatron's embedding-group all-reduce) and the
// copy is not counted in the norm.
//
// Checkpoints keep the single-process layout: whole_state() assembles the whole model and its
// optimizer state under global names (a collective), and load() takes a rank's part of a state
// read from any checkpoint, so a run resumes under any DP x EP layout.
#pragma once
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dist/process_groups.h"
#include "model/train_model.h"
#include "train/distributed_optimizer.h"
#include "train/flat_buckets.h"
#include "train/optimizer.h"

namespace moe::train {

// How the DP and expert-DP communication overlaps computation (flat_buckets.h).
struct CommOverlap {
  bool grad_reduce = false;   // --overlap_grad_reduce
  bool param_gather = false;  // --overlap_param_gather (with the distributed optimizer)
  size_t bucket_elems = 0;    // --ddp_bucket_size
};

class ParallelOptimizer {
 public:
  // `groups` null: one process. The model must outlive this object.
  ParallelOptimizer(const OptimizerConfig& cfg, model::TrainModel& model, const dist::ProcessGroups* groups,
                    bool distributed, CommOverlap overlap = {});

  // --overlap_grad_reduce (some group with more than one rank): before a step's micro-batches,
  // begin_overlapped_reduce(); then each bucket's reduction starts once the model reported its
  // parameters final (TrainModel::on_final_grads -> grads_final). The gradients the TP and
  // embedding groups sum first (sequence-parallel norms, a tied embedding) are held back until
  // reduce_and_clip() summed them.
  bool overlaps_grad_reduce() const { return overlap_.grad_reduce && has_buckets(); }
  void begin_overlapped_reduce();
  void grads_final(int part);
  // Buckets whose reduction started during the last backward, of all (for the log).
  std::pair<int, int> overlapped_buckets() const;
  // --overlap_param_gather: step() leaves the updated parameters travelling; the model calls
  // params_needed (TrainModel::on_params_needed) before each part's forward, and every other
  // reader of the parameters calls finish_param_gather() first (this class's own do).
  bool overlaps_param_gather() const { return overlap_.param_gather && has_buckets(); }
  void params_needed(int part);
  void finish_param_gather() const;

  // Gradients reduced over their groups, clipped to max_norm (0: off) by the global L2 norm,
  // which is returned (non-finite: some gradient somewhere is NaN/Inf; nothing clipped).
  double reduce_and_clip(double max_norm);
  // The L2 norm of the model's parameters over the job, each counted once as in the gradient norm
  // (Megatron's calc_params_l2_norm, for --log_params_norm). A collective over every rank.
  double params_norm() const;
  // One update on every rank, unless it would make a weight or state non-finite on any rank:
  // then nothing changes anywhere and false is returned on every rank.
  bool step(double lr, double grad_bound);

  // The rank's optimizer state over its own parameters (rank-local names), for a resume to fill
  // (load_training_state); load() then hands each region its part and lets it go.
  Optimizer& local() { return local_; }
  void load();

  // Checkpoints of a job: each EP rank's expert-data-parallel rank 0 writes the rank's file
  // (its dense parameters and experts, EP-local names) with this state, gathered from the
  // distributed optimizer's shards (a collective over every rank); release it after writing.
  bool writes_rank_file() const;
  int ep_rank() const { return groups_ ? groups_->ep().rank() : 0; }
  const Optimizer& gather_rank_state();
  void release_rank_state() { release_local_state(); }

  // The whole model (global names: every expert of every EP rank) and its optimizer state, on
  // every rank: a collective over the job. `with_optimizer` false: the weights only.
  struct Whole {
    model::StateDict params;               // views (into the model, or a gathered copy they keep alive)
    const Optimizer* optimizer = nullptr;  // the state (null without with_optimizer)
    std::unique_ptr<Optimizer> owned;      // what `optimizer` points to when it was assembled
  };
  Whole whole_state(bool with_optimizer);

  // The rank-local name of a checkpoint's global parameter name (experts renumbered; nullopt: an
  // expert of another EP rank).
  std::optional<std::string> local_name(const std::string& global) const;

  // After a resume filled local(): the last stage's copy of a tied embedding (weights, and the
  // optimizer state when `with_state`) set from the first stage's embedding. A collective over
  // the embedding group; nothing without pipeline parallelism or tying.
  void sync_tied_output(bool with_state);

 private:
  struct Region {
    std::span<float> params, grads;
    std::vector<ParamRef> refs;
    std::vector<ParamRef> counted;                   // refs counted in the gradient norm on this rank
    dist::Communicator* group = nullptr;             // where its gradients are reduced; null: nowhere
    std::unique_ptr<DistributedOptimizer> dist_opt;  // sharded over `group`, or
    std::unique_ptr<Optimizer> opt;                  // replicated
    std::unique_ptr<FlatBuckets> buckets;            // the overlapped communication over `group`
  };
  bool has_buckets() const { return dense_.buckets || experts_.buckets; }
  // With overlap: the gradients (addresses) of each part of the model (TrainModel's parts), those
  // held back left out; and the parameters' data.
  std::map<int, std::vector<const float*>> part_grads_, part_params_;
  model::TrainModel& model_;
  const dist::ProcessGroups* groups_;
  OptimizerConfig cfg_;
  std::vector<ParamRef> all_;  // every parameter of the rank, flat order
  Region dense_, experts_;
  Optimizer local_;  // the rank's whole state, only between checkpoint I/O and load() / saving
  CommOverlap overlap_;
  bool distributed_ = false;
  int64_t first_expert_ = 0, local_experts_ = 0;
  dist::Communicator* world_ = nullptr;  // where the norm and the finite check are agreed (with tp_)
  // Tensor parallelism: the TP group (null with one TP rank), and which parameters it splits (the
  // others every TP rank holds whole, with equal gradients: counted in the norm on TP rank 0 only).
  dist::Communicator* tp_ = nullptr;
  // Pipeline parallelism: the pipeline group (null with one stage), and the embedding group with
  // the name of the tied tensor this rank holds in it ("" when nothing is tied here).
  dist::Communicator* pp_ = nullptr;
  dist::Communicator* emb_ = nullptr;
  std::string tied_name_;
  // Sequence parallelism: the norms' weights (and under MoE parallel folding the routers'), whose
  // gradients each TP rank computed from its rows only (summed over TP before any other reduction,
  // as Megatron's sequence-parallel grads).
  std::vector<std::string> sp_grads_;
  // The job's sum over every rank of this rank's counted sums of squares (dense part, experts).
  double job_sum_of_squares(double dense, double experts) const;
  // The whole model from every stage's part (a collective over the pipeline group).
  void gather_stages(Whole& w) const;
  std::unique_ptr<model::ShardSpec> spec_;
  bool counted_in_norm(const std::string& name) const;
  // The whole tensor `name` from every TP rank's slice `local` (a collective over TP, in the same
  // parameter order on every rank), the vocabulary's padding rows dropped.
  Tensor gather_tp(const std::string& name, const float* local, const Shape& local_shape) const;

  void gather_local_state();   // every region's state into local_ (a collective)
  void release_local_state();  // local_ back to no state
};

}  // namespace moe::train
