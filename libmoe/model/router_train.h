// TopKRouter for training (Megatron-Core semantics): routing with optional token dropping at
// an expert capacity, the load-balancing losses (switch `aux_loss`, per-sequence
// `seq_aux_loss`), the router z-loss, an aux-loss-free expert bias that shifts only the
// selection, and the backward from the combine weights and those losses to the router logits.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "core/arena.h"
#include "dist/communicator.h"
#include "kernels/backend.h"
#include "model/router.h"

namespace moe::model {

struct MoeTrainOptions {
  std::string load_balancing_type = "aux_loss";  // aux_loss | seq_aux_loss | none
  double aux_loss_coeff = 0.0;                   // --moe_aux_loss_coeff (swift's default 0)
  double z_loss_coeff = 0.0;                     // --moe_z_loss_coeff
  double capacity_factor = 0.0;                  // --moe_expert_capacity_factor; <= 0: dropless
  bool pad_expert_input_to_capacity = false;     // --moe_pad_expert_input_to_capacity
  std::string token_drop_policy = "probs";       // probs | position
  bool enable_expert_bias = false;               // --moe_router_enable_expert_bias
  double bias_update_rate = 1e-3;                // --moe_router_bias_update_rate
  std::string token_dispatcher = "alltoall";     // --moe_token_dispatcher_type: alltoall | allgather (under EP)
};

struct RouterSaved {
  std::span<float> probs_TE;       // softmax over all experts (for the losses and pre-softmax weights)
  std::span<int32_t> selected_TK;  // the top-k choice before any dropping, best first
  std::span<float> selected_weight_TK;
  std::span<int32_t> expert_TK;  // what runs: dropped (token, slot) pairs have expert -1, weight 0
  std::span<float> weight_TK;
  std::span<int64_t> tokens_per_expert;  // [E], after dropping, over the whole micro-batch
  std::vector<double> seq_load_SE;       // seq_aux_loss: the sequences' loads over the whole micro-batch
  int64_t capacity = 0;                  // 0 when dropless
  double aux_loss = 0, z_loss = 0;       // this layer's losses, coefficients applied (see RouterRows)
};

// The rows one rank routes when a micro-batch's rows are split over a group (sequence parallelism
// under expert-parallel folding; context parallelism): rows [begin, begin + T) of its `tokens`, the
// other ranks of `group` routing the rest. The loads, and so the losses, are summed over the group
// (Megatron all-reduces them over the TP x CP group), so every rank's RouterSaved describes the
// whole micro-batch while its gradients are those of its own rows. The default: one rank routes all.
struct RouterRows {
  dist::Communicator* group = nullptr;
  int64_t begin = 0, tokens = 0;
  // The losses RouterSaved reports: summed over the group (the whole micro-batch's, on every rank),
  // or with keep_shares this rank's share, for a caller that sums its statistics over the group
  // itself (context parallelism's sum over DP x CP). Context parallelism's rows are not one range
  // of the micro-batch's sequences, so it leaves `begin` 0 and cannot give seq_aux_loss.
  bool keep_shares = false;
};

// What the forward keeps for T tokens over E experts, top-K (the sizes the workspace is planned from).
RouterSaved carve_router_saved(Arena& keep, int64_t T, int64_t E, int64_t K);
// Expert capacity under `o` (0: dropless).
int64_t router_capacity(const MoeTrainOptions& o, int64_t T, int64_t E, int64_t K);

// logits_TE: router logits of T rows (`rows` says which of the micro-batch's). cu_seqlens splits
// the micro-batch into sequences (seq_aux_loss). expert_bias_E may be null. `saved` is carved from
// `keep`. A collective over rows.group when it has one.
void router_train_forward(const Backend& b, const MoeTrainOptions& o, const float* logits_TE, int64_t T, int64_t E,
                          int64_t K, bool pre_softmax, std::span<const int32_t> cu_seqlens, const float* expert_bias_E,
                          const RouterRows& rows, Arena& keep, RouterSaved& saved);
// Inference's choice alone: the top-k experts and combine weights (expert_TK, weight_TK of `saved`,
// the rest carved but not computed; dropless, so what router_train_forward would pick), on the
// backend, with nothing crossing to the host.
void router_infer_topk(const Backend& b, const MoeTrainOptions& o, const float* logits_TE, int64_t T, int64_t E,
                       int64_t K, bool pre_softmax, const float* expert_bias_E, Arena& keep, RouterSaved& saved);

// dlogits_TE (overwritten) from d(combine weight)_TK plus the losses' gradients, each loss
// scaled by loss_scale (the step's weighting of this micro-batch's auxiliary losses).
void router_train_backward(const Backend& b, const MoeTrainOptions& o, const float* logits_TE, int64_t T, int64_t E,
                           int64_t K, bool pre_softmax, std::span<const int32_t> cu_seqlens, const RouterRows& rows,
                           const RouterSaved& saved, const float* dweight_TK, float loss_scale, float* dlogits_TE);

// Aux-loss-free balancing: bias_e += rate * sign(mean load - load_e), after the optimizer step.
void update_expert_bias(float* bias_E, std::span<const int64_t> tokens_per_expert, double rate);

}  // namespace moe::model
