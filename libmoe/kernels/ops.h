// The ops model code calls (namespace moe::ops): one declared signature per op, dispatched on
// the Backend to the CPU implementation (kernels/cpu) or, where one exists, the CUDA twin
// (kernels/cuda). Model code names no backend, runs no threads and owns no kernel loops: a
// module is a sequence of these calls. An op a backend lacks throws InternalError naming it.
// Shapes are in the names (legend in DESIGN.md section 6); f32 activations throughout.
#pragma once
#include <cstdint>
#include <span>

#include "core/tensor.h"
#include "kernels/backend.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_varlen.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/router.h"

namespace moe::ops {

using AttentionShape = kernels::cpu::AttentionShape;
using VarlenAttention = kernels::cpu::VarlenAttention;
using CrossEntropySums = kernels::cpu::CrossEntropySums;
using RouterOptions = kernels::cpu::RouterOptions;
using RouterLosses = kernels::cpu::RouterLosses;
using LoadBalancing = kernels::cpu::LoadBalancing;

// --- projections. y_TN (+)= x_TD · Wᵀ (+ bias): W in its stored dtype (f32, bf16, f16).
// The kernel depends only on (dtype, T), never on who calls, so inference and training agree.
void linear(const Backend& b, const float* x_TD, int64_t T, const Tensor& W_ND, const float* bias_N, float* y_TN,
            bool accumulate = false);
// The backward of linear for an f32 W: dx_TD (+)= dy_TN · W, and dW_ND += dy_TNᵀ · x_TD.
void linear_backward_input(const Backend& b, const float* dy_TN, int64_t T, const float* W_ND, int64_t N, int64_t D,
                           float* dx_TD, bool accumulate);
void linear_backward_weight(const Backend& b, const float* dy_TN, const float* x_TD, int64_t T, int64_t N, int64_t D,
                            float* dW_ND);
// db_N += Σ_t dy_TN[t].
void bias_backward(const Backend& b, const float* dy_TN, int64_t T, int64_t N, float* db_N);

// --- memory. Bytes from the host into the backend's memory and back (a memcpy on the CPU): the
// only way model code reads an op's output or hands it host data.
void to_device(const Backend& b, void* dst, const void* src, size_t bytes);
void to_host(const Backend& b, void* dst, const void* src, size_t bytes);

// --- row-wise ops
void rmsnorm(const Backend& b, const float* x_TD, int64_t T, int64_t D, const float* w_D, float eps, float* y_TD);
void rmsnorm_backward(const Backend& b, const float* x_TD, int64_t T, int64_t D, const float* w_D, float eps,
                      const float* dy_TD, float* dx_TD, float* dw_D);
void swiglu(const Backend& b, const float* gu_T2F, int64_t T, int64_t F, float* h_TF);
void swiglu_backward(const Backend& b, const float* gu_T2F, const float* dh_TF, int64_t T, int64_t F, float* dgu_T2F);
void rope(const Backend& b, float* x_THd, int64_t T, int64_t H, int64_t d, const int32_t* pos_T, const float* cos,
          const float* sin);
void rope_backward(const Backend& b, float* dx_THd, int64_t T, int64_t H, int64_t d, const int32_t* pos_T,
                   const float* cos, const float* sin);
void add(const Backend& b, float* y, const float* x, int64_t n);  // y += x
void copy(const Backend& b, float* y, const float* x, int64_t n);
void fill(const Backend& b, float* y, float value, int64_t n);
// y_TD[rows[i]] = x_RD[i] (scatter of gathered rows) and its inverse gather.
void gather_rows(const Backend& b, const float* x_TD, int64_t D, std::span<const int64_t> rows, float* y_RD);
void scatter_rows(const Backend& b, const float* x_RD, int64_t D, std::span<const int64_t> rows, float* y_TD);

// --- embedding and head
void embedding_gather(const Backend& b, const Tensor& table_VD, std::span<const int32_t> ids_T, float* out_TD);
void embedding_scatter_add(const Backend& b, const float* dout_TD, std::span<const int32_t> ids_T, int64_t D,
                           float* dtable_VD);
// Cross-entropy with ignore label (< 0), fused with its gradient (logits overwritten by it).
CrossEntropySums cross_entropy(const Backend& b, float* logits_TV, int64_t T, int64_t V, const int32_t* labels_T,
                               float grad_scale);

// --- attention
void qkv_split(const Backend& b, const float* qkv_TR, int64_t T, int64_t nh, int64_t ng, int64_t d, float* q_THd,
               float* k_TGd, float* v_TGd);
void qkv_merge(const Backend& b, const float* q_THd, const float* k_TGd, const float* v_TGd, int64_t T, int64_t nh,
               int64_t ng, int64_t d, float* qkv_TR);
void attention_varlen(const Backend& b, const VarlenAttention& a, const float* q, const float* k, const float* v,
                      float* out, float* lse);
void attention_varlen_backward(const Backend& b, const VarlenAttention& a, const float* q, const float* k,
                               const float* v, const float* out, const float* lse, const float* dout, float* dq,
                               float* dk, float* dv);
void causal_attention(const Backend& b, const AttentionShape& s, const float* q_THd, const float* k_SGd,
                      const float* v_SGd, float* out_THd);

// --- MoE
// The router's maths (kernels/cpu/router.h): scores, top-k (with the selection-only expert
// bias), capacity drop, loads and losses forward; the gradient to the logits backward. The
// forward in two halves around the loads (router_route, router_balancing_loss) for a micro-batch
// whose rows several ranks route, or whole (router_forward).
int64_t router_capacity(int64_t T, int64_t E, int64_t K, double factor);
double router_route(const Backend& b, const RouterOptions& o, const float* logits_TE, int64_t T,
                    const float* expert_bias_E, float* probs_TE, int32_t* selected_TK, float* selected_weight_TK,
                    int32_t* expert_TK, float* weight_TK, int64_t* load_E);
void router_seq_loads(const Backend& b, const int32_t* expert_TK, int64_t T, int64_t K, int64_t E,
                      const int32_t* cu_seqlens, int64_t S, int64_t row_begin, double* seq_load_SE);
double router_balancing_loss(const Backend& b, const RouterOptions& o, const float* probs_TE, int64_t T,
                             const int32_t* cu_seqlens, int64_t S, const int64_t* load_E, const double* seq_load_SE);
RouterLosses router_forward(const Backend& b, const RouterOptions& o, const float* logits_TE, int64_t T,
                            const float* expert_bias_E, const int32_t* cu_seqlens, int64_t S, float* probs_TE,
                            int32_t* selected_TK, float* selected_weight_TK, int32_t* expert_TK, float* weight_TK,
                            int64_t* load_E);
void router_backward(const Backend& b, const RouterOptions& o, const float* logits_TE, int64_t T,
                     const int32_t* cu_seqlens, int64_t S, const float* probs_TE, const int32_t* selected_TK,
                     const float* selected_weight_TK, const int32_t* expert_TK, const int64_t* load_E,
                     const double* seq_load_SE, const float* dweight_TK, float loss_scale, float* dlogits_TE);
void router_topk(const Backend& b, const RouterOptions& o, const float* logits_TE, int64_t T,
                 const float* expert_bias_E, int32_t* expert_TK, float* weight_TK);
// The expert-sorted row map of a routing (see kernels/cpu/permute.h); returns the rows R.
int64_t permute_plan(const Backend& b, const int32_t* expert_TK, int64_t T, int64_t K, int64_t E, int64_t pad_to,
                     int64_t* counts_E, int64_t* offsets_E, int64_t* row_slot_R);
void permute(const Backend& b, const float* x_TD, int64_t D, const int64_t* row_slot_R, int64_t R, int64_t K,
             float* x_perm_RD);
void permute_backward_add(const Backend& b, const float* dx_perm_RD, int64_t D, const int64_t* row_slot_R, int64_t R,
                          int64_t K, float* dx_TD);
void unpermute_add(const Backend& b, const float* y_perm_RD, int64_t D, const int64_t* row_slot_R, int64_t R, int64_t K,
                   const float* weight_TK, float* out_TD);
void unpermute_add_backward(const Backend& b, const float* dout_TD, const float* y_perm_RD, int64_t D,
                            const int64_t* row_slot_R, int64_t R, int64_t T, int64_t K, const float* weight_TK,
                            float* dy_perm_RD, float* dweight_TK);
// Local experts side by side (grouped GEMM): for each expert e with rows [offsets_E[e],
// + blocks_E[e]) of x_perm, y = fc2_E[e](swiglu(fc1_E[e](x))). gu_R2F receives fc1's output
// (always); h_RF the activation (null: not kept). Experts run balanced over the threads.
void grouped_swiglu(const Backend& b, const float* x_perm_RD, int64_t D, int64_t F, std::span<const int64_t> offsets_E,
                    std::span<const int64_t> blocks_E, std::span<const Tensor> fc1_E, std::span<const Tensor> fc2_E,
                    float* gu_R2F, float* h_RF, float* y_perm_RD);
// Decode's experts by id (kernels/cpu/grouped_gemv.h): y_TD += Σ_k weight_TK · fc2(swiglu(fc1(x)))
// of expert_TK's experts, reading the ids where the router wrote them, so on a device nothing
// crosses to the host. gu_P2F, h_PF, y_PD: the T K pairs' scratch. On CUDA a layer's experts
// must lie side by side in memory, as weights_on_device puts them. For few tokens.
void experts_by_id(const Backend& b, const float* x_TD, int64_t T, int64_t K, int64_t D, int64_t F,
                   const int32_t* expert_TK, const float* weight_TK, std::span<const Tensor> fc1_E,
                   std::span<const Tensor> fc2_E, float* gu_P2F, float* h_PF, float* y_PD, float* y_TD);
// Its backward (f32 weights): dx_perm overwritten, weight gradients accumulated; h_RF null
// recomputes the activation from gu.
void grouped_swiglu_backward(const Backend& b, const float* x_perm_RD, int64_t D, int64_t F,
                             std::span<const int64_t> offsets_E, std::span<const int64_t> blocks_E,
                             std::span<const Tensor> fc1_E, std::span<const Tensor> fc2_E, const float* gu_R2F,
                             const float* h_RF, const float* dy_perm_RD, float* dx_perm_RD, std::span<Tensor> dfc1_E,
                             std::span<Tensor> dfc2_E);
// Shared-expert gate: gate_T = sigmoid(logit_T); y_TD += gate * shared_TD. Backward: dshared
// = gate * dy; dlogit = (dy . shared) gate (1 - gate).
void shared_gate(const Backend& b, const float* logit_T, const float* shared_TD, int64_t T, int64_t D, float* gate_T,
                 float* y_TD);
void shared_gate_backward(const Backend& b, const float* dy_TD, const float* shared_TD, const float* gate_T, int64_t T,
                          int64_t D, float* dshared_TD, float* dlogit_T);

}  // namespace moe::ops
