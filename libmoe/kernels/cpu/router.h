// The MoE router's maths as ops (Megatron-Core TopKRouter semantics): scores (softmax or
// sigmoid), top-k selection with an optional expert bias that shifts only the choice, the
// combine weights, token dropping at an expert capacity, the load-balancing losses (switch
// aux_loss, per-sequence seq_aux_loss), the z-loss, and the backward of all of it to the
// logits. Pure functions of host arrays; the model's router and the EP dispatcher call them.
#pragma once
#include <cstdint>

namespace moe::kernels::cpu {

enum class RouterScore : uint8_t { Softmax, Sigmoid };
enum class LoadBalancing : uint8_t { None, AuxLoss, SeqAuxLoss };

struct RouterOptions {
  int64_t E = 0, K = 0;
  RouterScore score = RouterScore::Softmax;
  // Softmax only. true: softmax over all E, then top-k, weights not renormalised (HF
  // norm_topk_prob=false). false: top-k of the logits, then softmax over those k (the
  // renormalised top-k probabilities). Sigmoid weights are renormalised over the k when K > 1.
  bool pre_softmax = false;
  int64_t capacity = 0;       // per-expert (token, slot) pairs kept; 0: dropless
  bool drop_by_probs = true;  // drop the least probable pairs (else the last in token order)
  LoadBalancing balancing = LoadBalancing::None;
  double aux_loss_coeff = 0;  // the balancing loss is computed only when > 0
  double z_loss_coeff = 0;    // the z-loss is computed only when > 0
  // Sequence parallelism under expert-parallel folding: the T rows routed here are rows [row_begin,
  // row_begin + T) of a micro-batch of total_tokens tokens (0: T, the rows are the whole
  // micro-batch) whose other rows other ranks route. The losses are then these rows' share of the
  // micro-batch's (summed over the ranks: the whole micro-batch's), normalised by total_tokens and
  // computed from the whole micro-batch's loads, which the caller sums over the ranks between
  // router_route and router_balancing_loss (Megatron all-reduces them over the TP x CP group).
  int64_t row_begin = 0, total_tokens = 0;
  int64_t tokens(int64_t T) const { return total_tokens > 0 ? total_tokens : T; }
};

struct RouterLosses {
  double aux_loss = 0, z_loss = 0;  // coefficients applied
};

// Megatron's capacity: ceil(T K / E * factor).
int64_t router_capacity(int64_t T, int64_t E, int64_t K, double factor);

// Row-wise softmax: probs_TE = exp(l - max) / sum (exp and sum in double, rounded to float);
// lse_T (may be null) = max + log(sum), the logits' log-sum-exp.
void router_softmax(const float* logits_TE, int64_t T, int64_t E, float* probs_TE, double* lse_T);

// Sigmoid scores normalised over all experts (Megatron's input to the balancing losses with
// sigmoid routing): p = s / (sum_e s + 1e-20), s = sigmoid(l).
void router_sigmoid_norm(const float* logits_TE, int64_t T, int64_t E, float* probs_TE);

// Top-k choice and combine weights per token, best first; ties pick the lower expert id (as
// torch.topk on CPU). Softmax as RouterOptions says; with expert_bias_E (may be null) the
// choice is by score + bias (score = probs when pre_softmax, else logits) and the weights stay
// those of the unbiased scores. Only E, K, score and pre_softmax of `o` are read.
void router_topk(const RouterOptions& o, const float* logits_TE, int64_t T, const float* expert_bias_E,
                 int32_t* expert_TK, float* weight_TK);

// Keeps at most `capacity` pairs per expert (the most probable ones, or the first in token
// order); the others become expert -1, weight 0, in place. Ids must be in [0, E).
void router_drop_over_capacity(int32_t* expert_TK, float* weight_TK, int64_t T, int64_t K, int64_t E, int64_t capacity,
                               bool by_probs);

// counts_E = pairs per expert (ids of -1 not counted).
void router_tokens_per_expert(const int32_t* expert_TK, int64_t T, int64_t K, int64_t E, int64_t* counts_E);

// Switch load balancing over a micro-batch of N tokens: coeff E / (K N^2) sum_e load_e sum_t p_te,
// the sum over the T rows here (all N of them, or one rank's share; see RouterOptions).
double router_aux_loss(const float* probs_TE, const int64_t* load_E, int64_t T, int64_t N, int64_t E, int64_t K,
                       double coeff);
// dprobs_TE += d(scale * aux_loss) / d(probs).
void router_aux_loss_backward(const int64_t* load_E, int64_t T, int64_t N, int64_t E, int64_t K, double coeff,
                              double scale, double* dprobs_TE);

// Per-sequence loads of the T rows [row_begin, row_begin + T) of a micro-batch split into
// sequences [cu[q], cu[q+1]): seq_load_SE[q, e] = their kept pairs of sequence q routed to e.
void router_seq_loads(const int32_t* expert_TK, int64_t T, int64_t K, int64_t E, const int32_t* cu_seqlens, int64_t S,
                      int64_t row_begin, double* seq_load_SE);
// Per-sequence balancing over sequences of lengths L: coeff times the mean over sequences of
// sum_e (load_e E / (L K)) mean_t p_te, with the sequences' loads seq_load_SE (the whole
// micro-batch's) and the probabilities of the T rows from row_begin (their share of the means).
double router_seq_aux_loss(const float* probs_TE, const double* seq_load_SE, const int32_t* cu_seqlens, int64_t S,
                           int64_t row_begin, int64_t T, int64_t E, int64_t K, double coeff);
void router_seq_aux_loss_backward(const double* seq_load_SE, const int32_t* cu_seqlens, int64_t S, int64_t row_begin,
                                  int64_t T, int64_t E, int64_t K, double coeff, double scale, double* dprobs_TE);

// z-loss over a micro-batch of N tokens: coeff sum_t lse_t^2 / N from router_softmax's lse_T of
// the T rows here (all N, or one rank's share).
double router_z_loss(const double* lse_T, int64_t T, int64_t N, double coeff);
// dlogits_TE += scale coeff 2 lse_t softmax(l_t) / N, lse recomputed from the logits.
void router_z_loss_backward(const float* logits_TE, int64_t T, int64_t N, int64_t E, double coeff, double scale,
                            float* dlogits_TE);

// The routing forward up to the balancing loss, in the model's order: scores, top-k, capacity
// drop, loads; returns the z-loss (these rows' share, RouterOptions). probs_TE: softmax
// probabilities (sigmoid: normalised sigmoid scores), the losses' input; selected_TK /
// selected_weight_TK: the top-k choice before dropping; expert_TK / weight_TK: what runs
// (dropped pairs -1 / 0); load_E: these rows' kept pairs per expert. expert_bias_E may be null.
double router_route(const RouterOptions& o, const float* logits_TE, int64_t T, const float* expert_bias_E,
                    float* probs_TE, int32_t* selected_TK, float* selected_weight_TK, int32_t* expert_TK,
                    float* weight_TK, int64_t* load_E);
// The enabled balancing loss of these rows from the whole micro-batch's loads: load_E for
// aux_loss, seq_load_SE ([S, E], router_seq_loads summed over the ranks) for seq_aux_loss (each
// may be null when the other type is on); 0 when off.
double router_balancing_loss(const RouterOptions& o, const float* probs_TE, int64_t T, const int32_t* cu_seqlens,
                             int64_t S, const int64_t* load_E, const double* seq_load_SE);

// One process routing a whole micro-batch: router_route, the loads, router_balancing_loss. cu_seqlens
// [S + 1] is read by seq_aux_loss only (may be null otherwise).
RouterLosses router_forward(const RouterOptions& o, const float* logits_TE, int64_t T, const float* expert_bias_E,
                            const int32_t* cu_seqlens, int64_t S, float* probs_TE, int32_t* selected_TK,
                            float* selected_weight_TK, int32_t* expert_TK, float* weight_TK, int64_t* load_E);

// dlogits_TE (overwritten) from d(weight)_TK of the kept pairs plus the enabled losses'
// gradients, each loss weighted by loss_scale. Takes router_route's outputs and the loads the
// balancing loss read (the whole micro-batch's: load_E, and seq_load_SE with seq_aux_loss).
void router_backward(const RouterOptions& o, const float* logits_TE, int64_t T, const int32_t* cu_seqlens, int64_t S,
                     const float* probs_TE, const int32_t* selected_TK, const float* selected_weight_TK,
                     const int32_t* expert_TK, const int64_t* load_E, const double* seq_load_SE,
                     const float* dweight_TK, float loss_scale, float* dlogits_TE);

}  // namespace moe::kernels::cpu
