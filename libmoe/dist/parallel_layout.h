// ParallelLayout: how a job's ranks divide the model, in Megatron's sizes (TP, PP, virtual PP,
// EP, ETP, CP, DP). The one layout type: export shards checkpoints by it (model/shard_spec.h), the
// planner searches over it (plan/layout.h adds its own knobs), and the engine builds its process
// groups from it (dist/process_groups.h).
//
// A plain value, so the planner can enumerate candidates freely; whatever runs or writes files
// validates it once, up front, with from_flags() or validate(), and trusts it afterwards.
#pragma once
#include <string>

namespace moe::dist {

struct ParallelLayout {
  // Member order is the planner's text order (tp2,pp4,vpp1,ep8,etp1,cp1,dp4).
  int tp = 1;   // --tensor_model_parallel_size
  int pp = 1;   // --pipeline_model_parallel_size
  int vpp = 1;  // --virtual_pipeline_model_parallel_size: model chunks per pipeline rank (interleaved 1F1B)
  int ep = 1;   // --expert_model_parallel_size
  int etp = 1;  // --expert_tensor_parallel_size (Megatron defaults it to tp; see from_flags)
  int cp = 1;   // --context_parallel_size
  int dp = 1;   // data-parallel size: what the world leaves, world / (tp x pp x cp)
  // Uneven pipeline stages (--decoder_first_pipeline_num_layers / --decoder_last_pipeline_num_layers):
  // the first / last stage's layers, the others splitting the rest evenly; 0: an even split.
  int first_stage_layers = 0, last_stage_layers = 0;

  // Attention layers use tp x cp x dp x pp ranks; MoE layers fold the same tp x cp x dp ranks of a
  // stage into etp x ep x edp (MoE parallel folding), so edp needs ep x etp to divide tp x cp x dp.
  int world() const { return tp * pp * cp * dp; }
  // The same layout seen from within one pipeline stage (pp and vpp 1, no uneven split): how a
  // stage's tensors split over its TP and EP ranks, under global layer numbers.
  ParallelLayout stage_view() const {
    ParallelLayout l = *this;
    l.pp = l.vpp = 1, l.first_stage_layers = l.last_stage_layers = 0;
    return l;
  }
  int edp() const { return tp * cp * dp / (ep * etp); }
  bool operator==(const ParallelLayout&) const = default;

  // "" when the sizes form a layout; else the first rule they break, as one line naming the flags
  // and the numbers.
  std::string invalid_reason() const;
  // InputError with invalid_reason() unless it is "".
  void validate() const;
  // Megatron's command line on `world` ranks: data parallel is what is left, etp 0 means "as tp"
  // (Megatron's default). InputError naming the flag for a size < 1, a world the model-parallel
  // sizes do not divide, or a rule validate() checks.
  static ParallelLayout from_flags(int world, int tp, int pp, int ep, int etp, int cp, int vpp);
};

// tp2,pp4,vpp1,ep8,etp1,cp1,dp4 (every size, in member order).
std::string to_string(const ParallelLayout& l);

}  // namespace moe::dist
