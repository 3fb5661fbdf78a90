#include <cfloat>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/softmax.h"

namespace moe::kernels::cuda {

using detail::as_stream;
using detail::blocks_for;
using detail::check;
using detail::check_launch;
using detail::kThreads;

namespace {

__device__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// One thread per token: the rows are short (E experts), and K passes over them keep the selection
// plainly the CPU's partial sort.
__global__ void router_topk_kernel(int64_t E, int64_t K, bool sigmoid_score, bool pre_softmax, const float* logits,
                                   int64_t T, const float* bias, int32_t* expert, float* weight) {
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < T; t += int64_t(gridDim.x) * blockDim.x) {
    const float* l = logits + t * E;
    int32_t* ex = expert + t * K;
    float* wt = weight + t * K;
    // The softmax of the row (max in float, sum in double), for pre-softmax scores with a bias.
    float m = l[0];
    for (int64_t e = 1; e < E; ++e) m = fmaxf(m, l[e]);
    double z_all = 0;
    if (!sigmoid_score && bias && pre_softmax)
      for (int64_t e = 0; e < E; ++e) z_all += exp(double(l[e] - m));
    auto prob = [&](int64_t e) { return float(exp(double(l[e] - m)) / z_all); };
    auto score = [&](int64_t e) -> float {
      if (sigmoid_score) return sigmoid(l[e]) + (bias ? bias[e] : 0.0f);
      if (bias) return (pre_softmax ? prob(e) : l[e]) + bias[e];
      return l[e];
    };
    // k-th pick: the best of the experts ordered after the previous pick by (score desc, id asc).
    float prev = 0;
    for (int64_t k = 0; k < K; ++k) {
      int64_t best = -1;
      float best_score = 0;
      for (int64_t e = 0; e < E; ++e) {
        const float sc = score(e);
        const bool after = k == 0 || sc < prev || (sc == prev && e > ex[k - 1]);
        if (after && (best < 0 || sc > best_score)) best = e, best_score = sc;
      }
      ex[k] = int32_t(best);
      prev = best_score;
    }
    if (sigmoid_score) {
      double z = 0;
      for (int64_t k = 0; k < K; ++k) z += sigmoid(l[ex[k]]);
      for (int64_t k = 0; k < K; ++k) {
        const float p = sigmoid(l[ex[k]]);
        wt[k] = K > 1 ? float(double(p) / (z + 1e-20)) : p;
      }
    } else if (bias) {  // the weights of the unbiased scores
      double z = 0;
      for (int64_t k = 0; k < K; ++k) z += exp(double(l[ex[k]]));
      for (int64_t k = 0; k < K; ++k) wt[k] = pre_softmax ? prob(ex[k]) : float(exp(double(l[ex[k]])) / z);
    } else {
      const float top = l[ex[0]];
      double s = 0;
      if (pre_softmax)
        for (int64_t e = 0; e < E; ++e) s += double(expf(l[e] - top));
      else
        for (int64_t k = 0; k < K; ++k) s += double(expf(l[ex[k]] - top));
      for (int64_t k = 0; k < K; ++k) wt[k] = float(double(expf(l[ex[k]] - top)) / s);
    }
  }
}

// The larger of two (value, index) pairs; equal values keep the lower index (std::max_element).
__device__ void arg_max(float& v, int64_t& i, float v2, int64_t i2) {
  if (v2 > v || (v2 == v && i2 < i)) v = v2, i = i2;
}

// One block per row. Every element is read and written by the same thread; writes begin only
// after the reductions' barriers, when every thread has read what it needs (x[label], the max).
__global__ void cross_entropy_kernel(float* logits, int64_t V, const int32_t* labels, float grad_scale, double* loss_T,
                                     int* hit_T) {
  const int64_t t = blockIdx.x;
  float* x = logits + t * V;
  const int32_t label = labels[t];
  if (label < 0 || label >= V) {
    const float fill = label < 0 ? 0.0f : __int_as_float(0x7fc00000);
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) x[i] = fill;
    if (threadIdx.x == 0) loss_T[t] = label < 0 ? 0.0 : __longlong_as_double(0x7ff8000000000000ll), hit_T[t] = 0;
    return;  // the whole block takes this branch
  }
  const float x_label = x[label];
  float m = -INFINITY;
  int64_t arg = V;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) arg_max(m, arg, x[i], i);
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
    const int64_t a2 = __shfl_xor_sync(0xffffffffu, arg, o);
    arg_max(m, arg, m2, a2);
  }
  __shared__ float warp_m[kThreads / 32];
  __shared__ int64_t warp_arg[kThreads / 32];
  if (threadIdx.x % 32 == 0) warp_m[threadIdx.x / 32] = m, warp_arg[threadIdx.x / 32] = arg;
  __syncthreads();
  m = warp_m[0], arg = warp_arg[0];
  for (int w = 1; w < kThreads / 32; ++w) arg_max(m, arg, warp_m[w], warp_arg[w]);
  // x <- exp(x - m), summed in double; then the gradient.
  double s = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float e = expf(x[i] - m);
    x[i] = e;
    s += double(e);
  }
  s = detail::block_sum(s);
  const float k = float(double(grad_scale) / s);
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    float v = x[i] * k;
    if (i == label) v -= grad_scale;
    x[i] = v;
  }
  if (threadIdx.x == 0) loss_T[t] = double(m) + log(s) - double(x_label), hit_T[t] = arg == label;
}

struct Sums {
  double loss;
  long long count, correct;
};

// One block sums the rows with a label >= 0 (fixed order: deterministic).
__global__ void cross_entropy_sum_kernel(const double* loss_T, const int* hit_T, const int32_t* labels, int64_t T,
                                         Sums* out) {
  double loss = 0;
  long long count = 0, correct = 0;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x)
    if (labels[t] >= 0) loss += loss_T[t], count += 1, correct += hit_T[t];
  loss = detail::block_sum(loss);
  count = detail::block_sum(count);
  correct = detail::block_sum(correct);
  if (threadIdx.x == 0) *out = Sums{loss, count, correct};
}

}  // namespace

void router_topk(const cpu::RouterOptions& o, const float* logits, int64_t T, const float* bias, int32_t* expert,
                 float* weight, Stream stream) {
  MOE_ASSERT(o.K >= 1 && o.K <= o.E, "top-{} of {} experts", o.K, o.E);
  if (T == 0) return;
  router_topk_kernel<<<blocks_for(T), kThreads, 0, as_stream(stream)>>>(o.E, o.K, o.score == cpu::RouterScore::Sigmoid,
                                                                        o.pre_softmax, logits, T, bias, expert, weight);
  check_launch("router_topk");
}

cpu::CrossEntropySums cross_entropy_forward_backward(float* logits, int64_t T, int64_t V, const int32_t* labels,
                                                     float grad_scale, Stream stream) {
  if (T == 0) return {};
  const cudaStream_t s = as_stream(stream);
  detail::Scratch scratch(size_t(T) * (sizeof(double) + sizeof(int)) + sizeof(Sums) + sizeof(double), s);
  auto* out = scratch.as<Sums>();
  auto* loss_T = reinterpret_cast<double*>(out + 1);
  auto* hit_T = reinterpret_cast<int*>(loss_T + T);
  cross_entropy_kernel<<<detail::rows_grid(T), kThreads, 0, s>>>(logits, V, labels, grad_scale, loss_T, hit_T);
  check_launch("cross_entropy");
  cross_entropy_sum_kernel<<<1, kThreads, 0, s>>>(loss_T, hit_T, labels, T, out);
  check_launch("cross_entropy sums");
  Sums host;
  check(cudaMemcpyAsync(&host, out, sizeof(host), cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync D2H (cross_entropy)");
  check(cudaStreamSynchronize(s), "cudaStreamSynchronize (cross_entropy)");
  cpu::CrossEntropySums r;
  r.loss = host.loss, r.count = host.count, r.correct = host.correct;
  return r;
}

}  // namespace moe::kernels::cuda
