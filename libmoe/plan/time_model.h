// Time model: seconds per training step of one layout. Compute is Megatron's FLOPs per token
// (model FLOPs) run at an achievable fraction of the GPU's peak that shrinks with small GEMM
// dimensions, plus memory-bound elementwise work at HBM speed; communication (TP/SP, CP ring,
// EP all-to-all, PP P2P, DP reduce-scatter/all-gather with overlap) runs over NVLink or the
// network depending on whether its process group leaves the node in Megatron's rank order
// (tp-cp-dp-pp for dense parameters, etp-ep-edp-pp for experts). 1F1B bubble: (pp-1)/vpp
// micro-batch times.
#pragma once
#include <string>

#include "plan/cluster.h"
#include "plan/layout.h"
#include "plan/memory_model.h"
#include "plan/model_shape.h"

namespace moe::plan {

// Achievable rates (the stated calibration; see time_model.cpp for the sources).
inline constexpr double kGemmEfficiency = 0.72;       // share of dense BF16 peak on large GEMMs
inline constexpr double kFp8GemmEfficiency = 0.4;     // share of dense FP8 peak: casts and scaling eat most of the gain
                                                      // (Megatron-Bridge's FP8 MoE rows are barely above BF16 ones)
inline constexpr double kGemmHalfDim = 64;            // a GEMM dimension of this size halves the rate
inline constexpr double kAttentionEfficiency = 0.45;  // flash attention fwd+bwd
inline constexpr double kHbmEfficiency = 0.8;
inline constexpr double kElementwisePasses = 4;       // each kept activation: written, read, grad written and read
inline constexpr double kAllToAllEfficiency = 0.8;    // NCCL all-to-all vs bus bandwidth
inline constexpr double kMoeLayerOverheadS = 150e-6;  // per MoE layer per micro-batch: routing, permutation, host sync
inline constexpr double kDpUnoverlapped = 0.05;       // share of DP traffic that never overlaps (last bucket)
inline constexpr double kCpUnoverlapped = 0.3;        // share of the CP ring that stays exposed
inline constexpr double kP2pUnoverlapped = 0.25;      // share of interleaved PP p2p that stays exposed

// Per micro-batch on one pipeline stage (seconds).
struct StageTime {
  double compute = 0, recompute = 0, memory_bound = 0, tp_comm = 0, cp_comm = 0, ep_comm = 0, moe_overhead = 0,
         pp_p2p = 0;
  double total() const {
    return compute + recompute + memory_bound + tp_comm + cp_comm + ep_comm + moe_overhead + pp_p2p;
  }
};

struct TimeEstimate {
  int slowest_stage = 0;
  StageTime microbatch;  // the slowest stage's micro-batch
  int64_t microbatches = 0;
  double pipeline_s = 0, bubble_s = 0, dp_comm_s = 0, dp_exposed_s = 0, optimizer_s = 0, step_s = 0;
  double model_flops_per_step = 0;  // Megatron's count, whole cluster
  double tokens_per_s_per_gpu = 0, tflops_per_gpu = 0, mfu = 0, bubble_fraction = 0;
  const char *tp_link = "-", *cp_link = "-", *ep_link = "-", *dp_link = "-", *edp_link = "-",
             *pp_link = "-";  // NVLink | network | -
};

// Preconditions: the layout is valid and `mem` is its memory estimate.
TimeEstimate estimate_time(const ModelShape& m, const Layout& l, const TrainingOptions& t, const Cluster& c,
                           const MemoryEstimate& mem);

}  // namespace moe::plan
