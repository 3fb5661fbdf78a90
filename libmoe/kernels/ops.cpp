#include "kernels/ops.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <mutex>
#include <vector>

#include "core/error.h"
#include "core/log.h"
#include "core/parallel.h"
#include "kernels/cpu/backward.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gate.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/grouped_gemv.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/permute.h"
#include "kernels/cpu/qkv.h"
#include "kernels/device.h"
#ifdef MOE_HAVE_CUDA
#include "kernels/cuda/attention.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gather.h"
#include "kernels/cuda/linear.h"
#include "kernels/cuda/softmax.h"
#endif

// On a CUDA Backend every pointer, span and Tensor an op takes is device memory (a Tensor is a
// borrowed view of it), except grouped_swiglu's offsets_E and blocks_E, which size the
// per-expert GEMMs on the host. Work is queued on b.stream; ops that return a value wait for it.
// Every op holds a DeviceAccess while it runs: on the checked host backend (kernels/device.h) that
// is the only time its memory is open to the CPU kernels.

namespace moe::ops {

namespace k = kernels::cpu;

namespace {

// An op with no CUDA twin (yet), or any CUDA op in a build without CUDA.
[[noreturn]] void no_cuda(const char* op) {
#ifdef MOE_HAVE_CUDA
  throw_internal("op {} has no CUDA implementation yet", op);
#else
  throw_internal("op {} on a CUDA backend: moectl was built without CUDA", op);
#endif
}

void cpu_only(const Backend& b, const char* op) {
  const DeviceAccess access(b);
  if (b.kind != Backend::Kind::kCpu) no_cuda(op);  // the checked host backend refuses as CUDA would
}

}  // namespace

#ifdef MOE_HAVE_CUDA
namespace gpu = kernels::cuda;
// The CUDA branch of an op: `call` (a statement) in a CUDA build, otherwise the refusal.
#define CUDA_BRANCH(op, call) call
#else
#define CUDA_BRANCH(op, call) no_cuda(op)
#endif

void linear(const Backend& b, const float* x, int64_t T, const Tensor& W, const float* bias, float* y, bool acc) {
  const DeviceAccess access(b);
  access.expect_device("linear", x, W.raw(), bias, y);
  if (b.is_cpu()) return k::linear(x, T, W, bias, y, acc);
  MOE_ASSERT(W.ndim() == 2, "linear weight must be 2-D, got {}", shape_str(W.shape()));
  CUDA_BRANCH("linear", W.dtype() == DType::F32
                            ? gpu::linear_f32(x, T, W.f32(), W.dim(0), W.dim(1), y, bias, acc, b.stream)
                            : gpu::linear_half(x, T, W.raw(), W.dtype(), W.dim(0), W.dim(1), y, bias, acc, b.stream));
}

void linear_backward_input(const Backend& b, const float* dy, int64_t T, const float* W, int64_t N, int64_t D,
                           float* dx, bool acc) {
  const DeviceAccess access(b);
  if (b.is_cpu()) return k::gemm_nn(T, D, N, dy, W, dx, acc);
  CUDA_BRANCH("linear_backward_input", gpu::linear_backward_input(dy, T, W, N, D, dx, acc, b.stream));
}

void linear_backward_weight(const Backend& b, const float* dy, const float* x, int64_t T, int64_t N, int64_t D,
                            float* dW) {
  const DeviceAccess access(b);
  if (b.is_cpu()) return k::gemm_tn(N, D, T, dy, x, dW, true);
  CUDA_BRANCH("linear_backward_weight", gpu::linear_backward_weight(dy, x, T, N, D, dW, b.stream));
}

void bias_backward(const Backend& b, const float* dy, int64_t T, int64_t N, float* db) {
  const DeviceAccess access(b);
  if (b.is_cpu()) {
    for (int64_t t = 0; t < T; ++t) k::add_inplace(db, dy + t * N, N);
    return;
  }
  CUDA_BRANCH("bias_backward", gpu::bias_backward(dy, T, N, db, b.stream));
}

void rmsnorm(const Backend& b, const float* x, int64_t T, int64_t D, const float* w, float eps, float* y) {
  const DeviceAccess access(b);
  access.expect_device("rmsnorm", x, w, y);
  if (b.is_cpu()) return k::rmsnorm(x, T, D, w, eps, y);
  CUDA_BRANCH("rmsnorm", gpu::rmsnorm(x, T, D, w, eps, y, b.stream));
}

void rmsnorm_backward(const Backend& b, const float* x, int64_t T, int64_t D, const float* w, float eps,
                      const float* dy, float* dx, float* dw) {
  const DeviceAccess access(b);
  if (b.is_cpu()) return k::rmsnorm_backward(x, T, D, w, eps, dy, dx, dw);
  CUDA_BRANCH("rmsnorm_backward", gpu::rmsnorm_backward(x, T, D, w, eps, dy, dx, dw, b.stream));
}

void swiglu(const Backend& b, const float* gu, int64_t T, int64_t F, float* h) {
  const DeviceAccess access(b);
  access.expect_device("swiglu", gu, h);
  if (b.is_cpu()) return k::swiglu(gu, T, F, h);
  CUDA_BRANCH("swiglu", gpu::swiglu(gu, T, F, h, b.stream));
}

void swiglu_backward(const Backend& b, const float* gu, const float* dh, int64_t T, int64_t F, float* dgu) {
  const DeviceAccess access(b);
  if (b.is_cpu()) return k::swiglu_backward(gu, dh, T, F, dgu);
  CUDA_BRANCH("swiglu_backward", gpu::swiglu_backward(gu, dh, T, F, dgu, b.stream));
}

void rope(const Backend& b, float* x, int64_t T, int64_t H, int64_t d, const int32_t* pos, const float* cos,
          const float* sin) {
  const DeviceAccess access(b);
  access.expect_device("rope", x, pos, cos, sin);
  if (b.is_cpu()) return k::rope_apply(x, T, H, d, pos, cos, sin);
  CUDA_BRANCH("rope", gpu::rope_apply(x, T, H, d, pos, cos, sin, b.stream));
}

void rope_backward(const Backend& b, float* dx, int64_t T, int64_t H, int64_t d, const int32_t* pos, const float* cos,
                   const float* sin) {
  const DeviceAccess access(b);
  if (b.is_cpu()) return k::rope_apply_backward(dx, T, H, d, pos, cos, sin);
  CUDA_BRANCH("rope_backward", gpu::rope_apply_backward(dx, T, H, d, pos, cos, sin, b.stream));
}

void add(const Backend& b, float* y, const float* x, int64_t n) {
  const DeviceAccess access(b);
  access.expect_device("add", y, x);
  if (b.is_cpu()) return k::add_inplace(y, x, n);
  CUDA_BRANCH("add", gpu::add(y, x, n, b.stream));
}

void copy(const Backend& b, float* y, const float* x, int64_t n) {
  const DeviceAccess access(b);
  access.expect_device("copy", y, x);
  if (b.is_cpu()) {
    if (n > 0 && y != x) std::memcpy(y, x, size_t(n) * sizeof(float));
    return;
  }
  CUDA_BRANCH("copy", gpu::copy(y, x, n, b.stream));
}

void fill(const Backend& b, float* y, float value, int64_t n) {
  const DeviceAccess access(b);
  access.expect_device("fill", y);
  if (b.is_cpu()) return std::fill(y, y + n, value);
  CUDA_BRANCH("fill", gpu::fill(y, value, n, b.stream));
}

void gather_rows(const Backend& b, const float* x, int64_t D, std::span<const int64_t> rows, float* y) {
  const DeviceAccess access(b);
  if (b.is_cpu()) {
    for (size_t i = 0; i < rows.size(); ++i)
      std::memcpy(y + int64_t(i) * D, x + rows[i] * D, size_t(D) * sizeof(float));
    return;
  }
  CUDA_BRANCH("gather_rows", gpu::gather_rows(x, D, rows.data(), int64_t(rows.size()), y, b.stream));
}

void scatter_rows(const Backend& b, const float* x, int64_t D, std::span<const int64_t> rows, float* y) {
  const DeviceAccess access(b);
  if (b.is_cpu()) {
    for (size_t i = 0; i < rows.size(); ++i)
      std::memcpy(y + rows[i] * D, x + int64_t(i) * D, size_t(D) * sizeof(float));
    return;
  }
  CUDA_BRANCH("scatter_rows", gpu::scatter_rows(x, D, rows.data(), int64_t(rows.size()), y, b.stream));
}

void embedding_gather(const Backend& b, const Tensor& table, std::span<const int32_t> ids, float* out) {
  const DeviceAccess access(b);
  access.expect_device("embedding_gather", table.raw(), ids.data(), out);
  if (b.is_cpu())
    return k::embedding_gather(table.raw(), table.dtype(), table.dim(0), table.dim(1), ids.data(), int64_t(ids.size()),
                               out);
  CUDA_BRANCH("embedding_gather", gpu::embedding_gather(table.raw(), table.dtype(), table.dim(0), table.dim(1),
                                                        ids.data(), int64_t(ids.size()), out, b.stream));
}

void embedding_scatter_add(const Backend& b, const float* dout, std::span<const int32_t> ids, int64_t D,
                           float* dtable) {
  const DeviceAccess access(b);
  if (b.is_cpu()) return k::embedding_scatter_add(dout, ids.data(), int64_t(ids.size()), D, dtable);
  CUDA_BRANCH("embedding_scatter_add",
              gpu::embedding_scatter_add(dout, ids.data(), int64_t(ids.size()), D, dtable, b.stream));
}

CrossEntropySums cross_entropy(const Backend& b, float* logits, int64_t T, int64_t V, const int32_t* labels,
                               float grad_scale) {
  const DeviceAccess access(b);
  if (b.is_cpu()) return k::cross_entropy_forward_backward(logits, T, V, labels, grad_scale);
  CUDA_BRANCH("cross_entropy", return gpu::cross_entropy_forward_backward(logits, T, V, labels, grad_scale, b.stream));
}

void qkv_split(const Backend& b, const float* qkv, int64_t T, int64_t nh, int64_t ng, int64_t d, float* q, float* kk,
               float* v) {
  const DeviceAccess access(b);
  access.expect_device("qkv_split", qkv, q, kk, v);
  if (b.is_cpu()) return k::qkv_split(qkv, T, nh, ng, d, q, kk, v);
  CUDA_BRANCH("qkv_split", gpu::qkv_split(qkv, T, nh, ng, d, q, kk, v, b.stream));
}

void qkv_merge(const Backend& b, const float* q, const float* kk, const float* v, int64_t T, int64_t nh, int64_t ng,
               int64_t d, float* qkv) {
  const DeviceAccess access(b);
  if (b.is_cpu()) return k::qkv_merge(q, kk, v, T, nh, ng, d, qkv);
  CUDA_BRANCH("qkv_merge", gpu::qkv_merge(q, kk, v, T, nh, ng, d, qkv, b.stream));
}

void attention_varlen(const Backend& b, const VarlenAttention& a, const float* q, const float* kk, const float* v,
                      float* out, float* lse) {
  const DeviceAccess access(b);
  access.expect_device("attention_varlen", q, kk, v, out, lse, a.cu_seqlens, a.cu_seqlens_k, a.q_pos);
  if (b.is_cpu()) return k::attention_varlen_forward(a, q, kk, v, out, lse);
  CUDA_BRANCH("attention_varlen", gpu::attention_varlen_forward(a, q, kk, v, out, lse, b.stream));
}

void attention_varlen_backward(const Backend& b, const VarlenAttention& a, const float* q, const float* kk,
                               const float* v, const float* out, const float* lse, const float* dout, float* dq,
                               float* dk, float* dv) {
  const DeviceAccess access(b);
  cpu_only(b, "attention_varlen_backward");
  k::attention_varlen_backward(a, q, kk, v, out, lse, dout, dq, dk, dv);
}

void causal_attention(const Backend& b, const AttentionShape& s, const float* q, const float* kk, const float* v,
                      float* out) {
  const DeviceAccess access(b);
  access.expect_device("causal_attention", q, kk, v, out);
  if (b.is_cpu()) return k::causal_attention(s, q, kk, v, out);
  CUDA_BRANCH("causal_attention", gpu::causal_attention(s, q, kk, v, out, b.stream));
}

int64_t router_capacity(int64_t T, int64_t E, int64_t K, double factor) { return k::router_capacity(T, E, K, factor); }

namespace {

// The router has no device kernel but its top-k yet (router_topk, which decode uses): on a backend
// with its own memory its inputs come to the host, the CPU kernel runs there and the outputs go
// back. A prompt's MoE layer pays these round trips; its row map needs the choices on the host.
template <class T>
std::vector<T> fetch(const Backend& b, const T* p, int64_t n) {
  std::vector<T> v(p ? size_t(n) : 0);
  to_host(b, v.data(), p, v.size() * sizeof(T));
  return v;
}

template <class T>
void send(const Backend& b, T* p, const std::vector<T>& v) {
  to_device(b, p, v.data(), v.size() * sizeof(T));
}

}  // namespace

double router_route(const Backend& b, const RouterOptions& o, const float* logits, int64_t T, const float* bias,
                    float* probs, int32_t* selected, float* selected_weight, int32_t* expert, float* weight,
                    int64_t* load) {
  const DeviceAccess access(b);
  if (b.host_memory())
    return k::router_route(o, logits, T, bias, probs, selected, selected_weight, expert, weight, load);
  const int64_t E = o.E, K = o.K;
  const std::vector<float> l = fetch(b, logits, T * E), bias_h = fetch(b, bias, E);
  std::vector<float> p(size_t(T * E)), sw(size_t(T * K)), w(size_t(T * K));
  std::vector<int32_t> sel(size_t(T * K)), ex(size_t(T * K));
  std::vector<int64_t> ld(static_cast<size_t>(E));
  const double z = k::router_route(o, l.data(), T, bias ? bias_h.data() : nullptr, p.data(), sel.data(), sw.data(),
                                   ex.data(), w.data(), ld.data());
  send(b, probs, p), send(b, selected, sel), send(b, selected_weight, sw), send(b, expert, ex), send(b, weight, w);
  send(b, load, ld);
  return z;
}

// cu_seqlens and seq_load_SE are host memory on every backend (the batch's, the saved loads).
void router_seq_loads(const Backend& b, const int32_t* expert, int64_t T, int64_t K, int64_t E, const int32_t* cu,
                      int64_t S, int64_t row_begin, double* seq_load) {
  const DeviceAccess access(b);
  if (b.host_memory()) return k::router_seq_loads(expert, T, K, E, cu, S, row_begin, seq_load);
  k::router_seq_loads(fetch(b, expert, T * K).data(), T, K, E, cu, S, row_begin, seq_load);
}

double router_balancing_loss(const Backend& b, const RouterOptions& o, const float* probs, int64_t T, const int32_t* cu,
                             int64_t S, const int64_t* load, const double* seq_load) {
  const DeviceAccess access(b);
  if (b.host_memory() || !(o.aux_loss_coeff > 0))  // without the loss nothing is read
    return k::router_balancing_loss(o, probs, T, cu, S, load, seq_load);
  return k::router_balancing_loss(o, fetch(b, probs, T * o.E).data(), T, cu, S, fetch(b, load, o.E).data(), seq_load);
}

RouterLosses router_forward(const Backend& b, const RouterOptions& o, const float* logits, int64_t T, const float* bias,
                            const int32_t* cu, int64_t S, float* probs, int32_t* selected, float* selected_weight,
                            int32_t* expert, float* weight, int64_t* load) {
  const DeviceAccess access(b);
  cpu_only(b, "router_forward");
  return k::router_forward(o, logits, T, bias, cu, S, probs, selected, selected_weight, expert, weight, load);
}

void router_backward(const Backend& b, const RouterOptions& o, const float* logits, int64_t T, const int32_t* cu,
                     int64_t S, const float* probs, const int32_t* selected, const float* selected_weight,
                     const int32_t* expert, const int64_t* load, const double* seq_load, const float* dweight,
                     float loss_scale, float* dlogits) {
  const DeviceAccess access(b);
  cpu_only(b, "router_backward");
  k::router_backward(o, logits, T, cu, S, probs, selected, selected_weight, expert, load, seq_load, dweight, loss_scale,
                     dlogits);
}

void router_topk(const Backend& b, const RouterOptions& o, const float* logits, int64_t T, const float* bias,
                 int32_t* expert, float* weight) {
  const DeviceAccess access(b);
  access.expect_device("router_topk", logits, bias, expert, weight);
  if (b.is_cpu()) return k::router_topk(o, logits, T, bias, expert, weight);
  CUDA_BRANCH("router_topk", gpu::router_topk(o, logits, T, bias, expert, weight, b.stream));
}

int64_t permute_plan(const Backend& b, const int32_t* expert_TK, int64_t T, int64_t K, int64_t E, int64_t pad_to,
                     int64_t* counts, int64_t* offsets, int64_t* row_slot) {
  const DeviceAccess access(b);
  if (b.is_cpu()) return k::permute_plan(expert_TK, T, K, E, pad_to, counts, offsets, row_slot);
  CUDA_BRANCH("permute_plan",
              return gpu::permute_plan(expert_TK, T, K, E, pad_to, counts, offsets, row_slot, b.stream));
}

void permute(const Backend& b, const float* x, int64_t D, const int64_t* row_slot, int64_t R, int64_t K,
             float* x_perm) {
  const DeviceAccess access(b);
  access.expect_device("permute", x, row_slot, x_perm);
  if (b.is_cpu()) return k::permute(x, D, row_slot, R, K, x_perm);
  CUDA_BRANCH("permute", gpu::permute(x, D, row_slot, R, K, x_perm, b.stream));
}

void permute_backward_add(const Backend& b, const float* dx_perm, int64_t D, const int64_t* row_slot, int64_t R,
                          int64_t K, float* dx) {
  const DeviceAccess access(b);
  if (b.is_cpu()) return k::permute_backward_add(dx_perm, D, row_slot, R, K, dx);
  CUDA_BRANCH("permute_backward_add", gpu::permute_backward_add(dx_perm, D, row_slot, R, K, dx, b.stream));
}

void unpermute_add(const Backend& b, const float* y_perm, int64_t D, const int64_t* row_slot, int64_t R, int64_t K,
                   const float* weight, float* out) {
  const DeviceAccess access(b);
  access.expect_device("unpermute_add", y_perm, row_slot, weight, out);
  if (b.is_cpu()) return k::unpermute_add(y_perm, D, row_slot, R, K, weight, out);
  CUDA_BRANCH("unpermute_add", gpu::unpermute_add(y_perm, D, row_slot, R, K, weight, out, b.stream));
}

void unpermute_add_backward(const Backend& b, const float* dout, const float* y_perm, int64_t D,
                            const int64_t* row_slot, int64_t R, int64_t T, int64_t K, const float* weight,
                            float* dy_perm, float* dweight) {
  const DeviceAccess access(b);
  if (b.is_cpu()) return k::unpermute_add_backward(dout, y_perm, D, row_slot, R, T, K, weight, dy_perm, dweight);
  CUDA_BRANCH("unpermute_add_backward",
              gpu::unpermute_add_backward(dout, y_perm, D, row_slot, R, T, K, weight, dy_perm, dweight, b.stream));
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

#ifdef MOE_HAVE_CUDA
// The CUDA experts: one expert after another on the stream, cuBLAS GEMMs (or the half-weight
// GEMV for an expert with few rows) and the SwiGLU kernels; the backward takes f32 weights.
// Temporaries are sized for the largest expert and freed in stream order.
int64_t max_block(std::span<const int64_t> blocks_E) {
  int64_t m = 0;
  for (int64_t n : blocks_E) m = std::max(m, n);
  return m;
}

// A prefill's experts: fc1 of every expert with rows in one grouped GEMM, SwiGLU over all the
// rows, fc2 likewise. False when cuBLAS lacks the grouped GEMM for the weights' dtype.
bool grouped_swiglu_gemm(const Backend& b, const float* x, int64_t D, int64_t F, std::span<const int64_t> offsets,
                         std::span<const int64_t> blocks, std::span<const Tensor> fc1, std::span<const Tensor> fc2,
                         float* gu, float* h, float* y) {
  std::vector<int64_t> rows, first;
  std::vector<const void*> w1, w2;
  int64_t R = 0;
  for (size_t e = 0; e < blocks.size(); ++e) {
    R = std::max(R, offsets[e] + blocks[e]);
    if (blocks[e] == 0) continue;
    rows.push_back(blocks[e]), first.push_back(offsets[e]), w1.push_back(fc1[e].raw()), w2.push_back(fc2[e].raw());
  }
  const DType wt = fc1[0].dtype();
  const int64_t G = int64_t(rows.size());
  if (!gpu::linear_grouped(x, G, rows.data(), first.data(), w1.data(), wt, 2 * F, D, gu, b.stream)) {
    static std::once_flag once;  // said once: a prefill would repeat it for every layer
    std::call_once(once, [&] {
      log().warn("cuBLAS refused its grouped GEMM for {} experts: they run one GEMM after another", dtype_name(wt));
    });
    return false;
  }
  gpu::StreamBuffer h_tmp(h ? 0 : size_t(R * F) * sizeof(float), b.stream);
  float* hh = h ? h : h_tmp.as<float>();
  gpu::swiglu(gu, R, F, hh, b.stream);  // rows outside every block (none, or padding) are harmless
  return gpu::linear_grouped(hh, G, rows.data(), first.data(), w2.data(), wt, D, F, y, b.stream) ||
         (throw_internal("linear_grouped: fc2 refused where fc1 ran"), false);
}

void grouped_swiglu_cuda(const Backend& b, const float* x, int64_t D, int64_t F, std::span<const int64_t> offsets,
                         std::span<const int64_t> blocks, std::span<const Tensor> fc1, std::span<const Tensor> fc2,
                         float* gu, float* h, float* y) {
  const DeviceAccess access(b);
  if (max_block(blocks) > gpu::kHalfGemvMaxTokens &&
      grouped_swiglu_gemm(b, x, D, F, offsets, blocks, fc1, fc2, gu, h, y))
    return;
  gpu::StreamBuffer h_tmp(h ? 0 : size_t(max_block(blocks) * F) * sizeof(float), b.stream);
  for (size_t e = 0; e < blocks.size(); ++e) {
    const int64_t off = offsets[e], n = blocks[e];
    if (n == 0) continue;
    float* gu_e = gu + off * 2 * F;
    float* h_e = h ? h + off * F : h_tmp.as<float>();
    linear(b, x + off * D, n, fc1[e], nullptr, gu_e);  // in the weights' dtype
    gpu::swiglu(gu_e, n, F, h_e, b.stream);
    linear(b, h_e, n, fc2[e], nullptr, y + off * D);
  }
}

void grouped_swiglu_backward_cuda(const Backend& b, const float* x, int64_t D, int64_t F,
                                  std::span<const int64_t> offsets, std::span<const int64_t> blocks,
                                  std::span<const Tensor> fc1, std::span<const Tensor> fc2, const float* gu,
                                  const float* h, const float* dy, float* dx, std::span<Tensor> dfc1,
                                  std::span<Tensor> dfc2) {
  const DeviceAccess access(b);
  const int64_t m = max_block(blocks);
  gpu::StreamBuffer h_re(h ? 0 : size_t(m * F) * sizeof(float), b.stream), dh(size_t(m * F) * sizeof(float), b.stream),
      dgu(size_t(m * 2 * F) * sizeof(float), b.stream);
  for (size_t e = 0; e < blocks.size(); ++e) {
    const int64_t off = offsets[e], n = blocks[e];
    if (n == 0) continue;
    const float* gu_e = gu + off * 2 * F;
    const float* h_e = h ? h + off * F : (gpu::swiglu(gu_e, n, F, h_re.as<float>(), b.stream), h_re.as<float>());
    const float* dy_e = dy + off * D;
    gpu::linear_backward_weight(dy_e, h_e, n, D, F, dfc2[e].f32(), b.stream);                  // dfc2 += dyᵀ h
    gpu::linear_backward_input(dy_e, n, fc2[e].f32(), D, F, dh.as<float>(), false, b.stream);  // dh = dy fc2
    gpu::swiglu_backward(gu_e, dh.as<float>(), n, F, dgu.as<float>(), b.stream);
    gpu::linear_backward_weight(dgu.as<float>(), x + off * D, n, 2 * F, D, dfc1[e].f32(), b.stream);  // dfc1 += dguᵀ x
    gpu::linear_backward_input(dgu.as<float>(), n, fc1[e].f32(), 2 * F, D, dx + off * D, false, b.stream);
  }
}
#endif

}  // namespace

void grouped_swiglu(const Backend& b, const float* x, int64_t D, int64_t F, std::span<const int64_t> offsets,
                    std::span<const int64_t> blocks, std::span<const Tensor> fc1, std::span<const Tensor> fc2,
                    float* gu, float* h, float* y) {
  const DeviceAccess access(b);
  access.expect_device("grouped_swiglu", x, gu, h, y);
  for (size_t e = 0; e < fc1.size(); ++e) access.expect_device("grouped_swiglu", fc1[e].raw(), fc2[e].raw());
  if (!b.is_cpu())
    CUDA_BRANCH("grouped_swiglu", return grouped_swiglu_cuda(b, x, D, F, offsets, blocks, fc1, fc2, gu, h, y));
  if (k::grouped_gemv_applies(blocks)) return k::grouped_swiglu_gemv(x, D, F, offsets, blocks, fc1, fc2, gu, h, y);
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

#ifdef MOE_HAVE_CUDA
namespace {
// The elements between one expert's weights and the next's, all of one shape and dtype.
int64_t expert_stride(std::span<const Tensor> w, const char* which) {
  const auto* base = static_cast<const std::byte*>(w[0].raw());
  for (size_t e = 0; e < w.size(); ++e)
    if (w[e].dtype() != w[0].dtype() || w[e].shape() != w[0].shape() ||
        static_cast<const std::byte*>(w[e].raw()) != base + e * w[0].nbytes())
      throw_internal("experts_by_id: the layer's {} weights do not lie side by side in device memory", which);
  return w[0].numel();
}
}  // namespace
#endif

void experts_by_id(const Backend& b, const float* x, int64_t T, int64_t K, int64_t D, int64_t F, const int32_t* expert,
                   const float* weight, std::span<const Tensor> fc1, std::span<const Tensor> fc2, float* gu, float* h,
                   float* yp, float* y) {
  const DeviceAccess access(b);
  access.expect_device("experts_by_id", x, expert, weight, gu, h, yp, y);
  for (size_t e = 0; e < fc1.size(); ++e) access.expect_device("experts_by_id", fc1[e].raw(), fc2[e].raw());
  if (b.is_cpu()) return k::experts_by_id(x, T, K, D, F, expert, weight, fc1, fc2, gu, h, yp, y);
  MOE_ASSERT(!fc1.empty() && fc1.size() == fc2.size() && fc1[0].dtype() == fc2[0].dtype(),
             "experts_by_id: {} fc1 and {} fc2 weights of one dtype", fc1.size(), fc2.size());
  CUDA_BRANCH("experts_by_id",
              gpu::experts_by_id(x, T, K, D, F, expert, weight, fc1[0].raw(), expert_stride(fc1, "fc1"), fc2[0].raw(),
                                 expert_stride(fc2, "fc2"), fc1[0].dtype(), gu, h, yp, y, b.stream));
}

void grouped_swiglu_backward(const Backend& b, const float* x, int64_t D, int64_t F, std::span<const int64_t> offsets,
                             std::span<const int64_t> blocks, std::span<const Tensor> fc1, std::span<const Tensor> fc2,
                             const float* gu, const float* h, const float* dy, float* dx, std::span<Tensor> dfc1,
                             std::span<Tensor> dfc2) {
  const DeviceAccess access(b);
  if (!b.is_cpu())
    CUDA_BRANCH("grouped_swiglu_backward",
                return grouped_swiglu_backward_cuda(b, x, D, F, offsets, blocks, fc1, fc2, gu, h, dy, dx, dfc1, dfc2));
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
  const DeviceAccess access(b);
  access.expect_device("shared_gate", logit, shared, gate, y);
  if (b.is_cpu()) return k::shared_gate_forward(logit, shared, T, D, gate, y);
  CUDA_BRANCH("shared_gate", gpu::shared_gate_forward(logit, shared, T, D, gate, y, b.stream));
}

void shared_gate_backward(const Backend& b, const float* dy, const float* shared, const float* gate, int64_t T,
                          int64_t D, float* dshared, float* dlogit) {
  const DeviceAccess access(b);
  if (b.is_cpu()) return k::shared_gate_backward(dy, shared, gate, T, D, dshared, dlogit);
  CUDA_BRANCH("shared_gate_backward", gpu::shared_gate_backward(dy, shared, gate, T, D, dshared, dlogit, b.stream));
}

void to_device(const Backend& b, void* dst, const void* src, size_t bytes) {
  if (b.host_memory()) {
    if (bytes) std::memcpy(dst, src, bytes);
    return;
  }
  b.memory->to_device(dst, src, bytes);
}

void to_host(const Backend& b, void* dst, const void* src, size_t bytes) {
  if (b.host_memory()) {
    if (bytes) std::memcpy(dst, src, bytes);
    return;
  }
  b.memory->to_host(dst, src, bytes);
}

}  // namespace moe::ops
