#include "kernels/ops.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/cpu/backward.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gate.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/permute.h"
#include "kernels/cpu/qkv.h"

namespace moe::ops {

namespace k = kernels::cpu;

namespace {

// Every op checks its backend here; the CUDA rows arrive with the CUDA engine (issue 17).
void cpu_only(const Backend& b, const char* op) {
  if (!b.is_cpu()) throw_internal("op {} has no CUDA implementation yet", op);
}

}  // namespace

void linear(const Backend& b, const float* x, int64_t T, const Tensor& W, const float* bias, float* y, bool acc) {
  cpu_only(b, "linear");
  k::linear(x, T, W, bias, y, acc);
}

void linear_backward_input(const Backend& b, const float* dy, int64_t T, const float* W, int64_t N, int64_t D,
                           float* dx, bool acc) {
  cpu_only(b, "linear_backward_input");
  k::gemm_nn(T, D, N, dy, W, dx, acc);
}

void linear_backward_weight(const Backend& b, const float* dy, const float* x, int64_t T, int64_t N, int64_t D,
                            float* dW) {
  cpu_only(b, "linear_backward_weight");
  k::gemm_tn(N, D, T, dy, x, dW, true);
}

void bias_backward(const Backend& b, const float* dy, int64_t T, int64_t N, float* db) {
  cpu_only(b, "bias_backward");
  for (int64_t t = 0; t < T; ++t) k::add_inplace(db, dy + t * N, N);
}

void rmsnorm(const Backend& b, const float* x, int64_t T, int64_t D, const float* w, float eps, float* y) {
  cpu_only(b, "rmsnorm");
  k::rmsnorm(x, T, D, w, eps, y);
}

void rmsnorm_backward(const Backend& b, const float* x, int64_t T, int64_t D, const float* w, float eps,
                      const float* dy, float* dx, float* dw) {
  cpu_only(b, "rmsnorm_backward");
  k::rmsnorm_backward(x, T, D, w, eps, dy, dx, dw);
}

void swiglu(const Backend& b, const float* gu, int64_t T, int64_t F, float* h) {
  cpu_only(b, "swiglu");
  k::swiglu(gu, T, F, h);
}

void swiglu_backward(const Backend& b, const float* gu, const float* dh, int64_t T, int64_t F, float* dgu) {
  cpu_only(b, "swiglu_backward");
  k::swiglu_backward(gu, dh, T, F, dgu);
}

void rope(const Backend& b, float* x, int64_t T, int64_t H, int64_t d, const int32_t* pos, const float* cos,
          const float* sin) {
  cpu_only(b, "rope");
  k::rope_apply(x, T, H, d, pos, cos, sin);
}

void rope_backward(const Backend& b, float* dx, int64_t T, int64_t H, int64_t d, const int32_t* pos, const float* cos,
                   const float* sin) {
  cpu_only(b, "rope_backward");
  k::rope_apply_backward(dx, T, H, d, pos, cos, sin);
}

void add(const Backend& b, float* y, const float* x, int64_t n) {
  cpu_only(b, "add");
  k::add_inplace(y, x, n);
}

void copy(const Backend& b, float* y, const float* x, int64_t n) {
  cpu_only(b, "copy");
  if (n > 0 && y != x) std::memcpy(y, x, size_t(n) * sizeof(float));
}

void fill(const Backend& b, float* y, float value, int64_t n) {
  cpu_only(b, "fill");
  std::fill(y, y + n, value);
}

void gather_rows(const Backend& b, const float* x, int64_t D, std::span<const int64_t> rows, float* y) {
  cpu_only(b, "gather_rows");
  for (size_t i = 0; i < rows.size(); ++i) std::memcpy(y + int64_t(i) * D, x + rows[i] * D, size_t(D) * sizeof(float));
}

void scatter_rows(const Backend& b, const float* x, int64_t D, std::span<const int64_t> rows, float* y) {
  cpu_only(b, "scatter_rows");
  for (size_t i = 0; i < rows.size(); ++i) std::memcpy(y + rows[i] * D, x + int64_t(i) * D, size_t(D) * sizeof(float));
}

void embedding_gather(const Backend& b, const Tensor& table, std::span<const int32_t> ids, float* out) {
  cpu_only(b, "embedding_gather");
  k::embedding_gather(table.raw(), table.dtype(), table.dim(0), table.dim(1), ids.data(), int64_t(ids.size()), out);
}

void embedding_scatter_add(const Backend& b, const float* dout, std::span<const int32_t> ids, int64_t D,
                           float* dtable) {
  cpu_only(b, "embedding_scatter_add");
  k::embedding_scatter_add(dout, ids.data(), int64_t(ids.size()), D, dtable);
}

CrossEntropySums cross_entropy(const Backend& b, float* logits, int64_t T, int64_t V, const int32_t* labels,
                               float grad_scale) {
  cpu_only(b, "cross_entropy");
  return k::cross_entropy_forward_backward(logits, T, V, labels, grad_scale);
}

void qkv_split(const Backend& b, const float* qkv, int64_t T, int64_t nh, int64_t ng, int64_t d, float* q, float* kk,
               float* v) {
  cpu_only(b, "qkv_split");
  k::qkv_split(qkv, T, nh, ng, d, q, kk, v);
}

void qkv_merge(const Backend& b, const float* q, const float* kk, const float* v, int64_t T, int64_t nh, int64_t ng,
               int64_t d, float* qkv) {
  cpu_only(b, "qkv_merge");
  k::qkv_merge(q, kk, v, T, nh, ng, d, qkv);
}

void attention_varlen(const Backend& b, const VarlenAttention& a, const float* q, const float* kk, const float* v,
                      float* out, float* lse) {
  cpu_only(b, "attention_varlen");
  k::attention_varlen_forward(a, q, kk, v, out, lse);
}

void attention_varlen_backward(const Backend& b, const VarlenAttention& a, const float* q, const float* kk,
                               const float* v, const float* out, const float* lse, const float* dout, float* dq,
                               float* dk, float* dv) {
  cpu_only(b, "attention_varlen_backward");
  k::attention_varlen_backward(a, q, kk, v, out, lse, dout, dq, dk, dv);
}

void causal_attention(const Backend& b, const AttentionShape& s, const float* q, const float* kk, const float* v,
                      float* out) {
  cpu_only(b, "causal_attention");
  k::causal_attention(s, q, kk, v, out);
}

int64_t router_capacity(int64_t T, int64_t E, int64_t K, double factor) { return k::router_capacity(T, E, K, factor); }

RouterLosses router_forward(const Backend& b, const RouterOptions& o, const float* logits, int64_t T, const float* bias,
                            const int32_t* cu, int64_t S, float* probs, int32_t* selected, float* selected_weight,
                            int32_t* expert, float* weight, int64_t* load) {
  cpu_only(b, "router_forward");
  return k::router_forward(o, logits, T, bias, cu, S, probs, selected, selected_weight, expert, weight, load);
}

void router_backward(const Backend& b, const RouterOptions& o, const float* logits, int64_t T, const int32_t* cu,
                     int64_t S, const float* probs, const int32_t* selected, const float* selected_weight,
                     const int32_t* expert, const int64_t* load, const float* dweight, float loss_scale,
                     float* dlogits) {
  cpu_only(b, "router_backward");
  k::router_backward(o, logits, T, cu, S, probs, selected, selected_weight, expert, load, dweight, loss_scale, dlogits);
}

void router_topk(const Backend& b, const RouterOptions& o, const float* logits, int64_t T, const float* bias,
                 int32_t* expert, float* weight) {
  cpu_only(b, "router_topk");
  k::router_topk(o, logits, T, bias, expert, weight);
}

int64_t permute_plan(const Backend& b, const int32_t* expert_TK, int64_t T, int64_t K, int64_t E, int64_t pad_to,
                     int64_t* counts, int64_t* offsets, int64_t* row_slot) {
  cpu_only(b, "permute_plan");
  return k::permute_plan(expert_TK, T, K, E, pad_to, counts, offsets, row_slot);
}

void permute(const Backend& b, const float* x, int64_t D, const int64_t* row_slot, int64_t R, int64_t K,
             float* x_perm) {
  cpu_only(b, "permute");
  k::permute(x, D, row_slot, R, K, x_perm);
}

void permute_backward_add(const Backend& b, const float* dx_perm, int64_t D, const int64_t* row_slot, int64_t R,
                          int64_t K, float* dx) {
  cpu_only(b, "permute_backward_add");
  k::permute_backward_add(dx_perm, D, row_slot, R, K, dx);
}

void unpermute_add(const Backend& b, const float* y_perm, int64_t D, const int64_t* row_slot, int64_t R, int64_t K,
                   const float* weight, float* out) {
  cpu_only(b, "unpermute_add");
  k::unpermute_add(y_perm, D, row_slot, R, K, weight, out);
}

void unpermute_add_backward(const Backend& b, const float* dout, const float* y_perm, int64_t D,
                            const int64_t* row_slot, int64_t R, int64_t T, int64_t K, const float* weight,
                            float* dy_perm, float* dweight) {
  cpu_only(b, "unpermute_add_backward");
  k::unpermute_add_backward(dout, y_perm, D, row_slot, R, T, K, weight, dy_perm, dweight);
}

namespace {

// Experts side by side, one thread each, balanced by their rows: one barrier per layer
// instead of two per expert, and whole-matrix GEMMs. With fewer busy experts than threads,
// each expert's GEMMs split their rows over the threads instead.
template <class Fn>
void for_each_expert(std::span<const int64_t> blocks_E, Fn&& fn) {
  std::vector<int64_t> cost(blocks_E.begin(), blocks_E.end());
  int64_t busy = 0;
  for (int64_t c : cost) busy += c > 0;
  if (busy >= num_threads()) {
    parallel_items(cost, fn);
    return;
  }
  for (size_t e = 0; e < cost.size(); ++e)
    if (cost[e] > 0) fn(int64_t(e));
}

}  // namespace

void grouped_swiglu(const Backend& b, const float* x, int64_t D, int64_t F, std::span<const int64_t> offsets,
                    std::span<const int64_t> blocks, std::span<const Tensor> fc1, std::span<const Tensor> fc2,
                    float* gu, float* h, float* y) {
  cpu_only(b, "grouped_swiglu");
  for_each_expert(blocks, [&](int64_t e) {
    const int64_t off = offsets[size_t(e)], n = blocks[size_t(e)];
    float* gu_e = gu + off * 2 * F;
    std::vector<float> h_tmp;
    float* h_e = h ? h + off * F : (h_tmp.resize(size_t(n * F)), h_tmp.data());
    k::linear(x + off * D, n, fc1[size_t(e)], nullptr, gu_e);
    k::swiglu(gu_e, n, F, h_e);
    k::linear(h_e, n, fc2[size_t(e)], nullptr, y + off * D);
  });
}

void grouped_swiglu_backward(const Backend& b, const float* x, int64_t D, int64_t F, std::span<const int64_t> offsets,
                             std::span<const int64_t> blocks, std::span<const Tensor> fc1, std::span<const Tensor> fc2,
                             const float* gu, const float* h, const float* dy, float* dx, std::span<Tensor> dfc1,
                             std::span<Tensor> dfc2) {
  cpu_only(b, "grouped_swiglu_backward");
  for_each_expert(blocks, [&](int64_t e) {
    const int64_t off = offsets[size_t(e)], n = blocks[size_t(e)];
    const float* gu_e = gu + off * 2 * F;
    std::vector<float> h_re, dh(size_t(n * F)), dgu(size_t(n * 2 * F));
    const float* h_e = h ? h + off * F : (h_re.resize(size_t(n * F)), k::swiglu(gu_e, n, F, h_re.data()), h_re.data());
    const float* dy_e = dy + off * D;
    k::gemm_tn(D, F, n, dy_e, h_e, dfc2[size_t(e)].f32(), true);        // dfc2 += dyᵀ h
    k::gemm_nn(n, F, D, dy_e, fc2[size_t(e)].f32(), dh.data(), false);  // dh = dy fc2
    k::swiglu_backward(gu_e, dh.data(), n, F, dgu.data());
    k::gemm_tn(2 * F, D, n, dgu.data(), x + off * D, dfc1[size_t(e)].f32(), true);  // dfc1 += dguᵀ x
    k::gemm_nn(n, D, 2 * F, dgu.data(), fc1[size_t(e)].f32(), dx + off * D, false);
  });
}

void shared_gate(const Backend& b, const float* logit, const float* shared, int64_t T, int64_t D, float* gate,
                 float* y) {
  cpu_only(b, "shared_gate");
  k::shared_gate_forward(logit, shared, T, D, gate, y);
}

void shared_gate_backward(const Backend& b, const float* dy, const float* shared, const float* gate, int64_t T,
                          int64_t D, float* dshared, float* dlogit) {
  cpu_only(b, "shared_gate_backward");
  k::shared_gate_backward(dy, shared, gate, T, D, dshared, dlogit);
}

}  // namespace moe::ops
