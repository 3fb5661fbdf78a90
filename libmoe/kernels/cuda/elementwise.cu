#include <cfloat>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise.h"

namespace moe::kernels::cuda {

using detail::as_stream;
using detail::blocks_for;
using detail::check;
using detail::check_launch;
using detail::kThreads;

namespace {

#define GRID_STRIDE(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

__global__ void add_kernel(float* y, const float* x, int64_t n) { GRID_STRIDE(i, n) y[i] += x[i]; }

__global__ void fill_kernel(float* y, float v, int64_t n) { GRID_STRIDE(i, n) y[i] = v; }

// Per row: r = 1 / sqrt(mean(x^2) + eps) and c = (dy . w x) r^3 / D, both in double as on the CPU.
__global__ void rmsnorm_bwd_row_kernel(const float* x, int64_t D, const float* w, float eps, const float* dy,
                                       double* r_T, double* c_T) {
  const int64_t t = blockIdx.x;
  const float* xr = x + t * D;
  const float* g = dy + t * D;
  double ss = 0, dot = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    ss += double(xr[i]) * xr[i];
    dot += double(g[i]) * w[i] * xr[i];
  }
  ss = detail::block_sum(ss);
  dot = detail::block_sum(dot);
  if (threadIdx.x == 0) {
    const double r = 1.0 / sqrt(ss / double(D) + eps);
    r_T[t] = r;
    c_T[t] = dot * r * r * r / double(D);
  }
}

// One thread per column walking the tokens in order: deterministic, no atomics.
__global__ void rmsnorm_bwd_dw_kernel(const float* x, int64_t T, int64_t D, const float* dy, const double* r_T,
                                      float* dw) {
  GRID_STRIDE(i, D) {
    double acc = 0;
    for (int64_t t = 0; t < T; ++t) acc += double(dy[t * D + i]) * x[t * D + i] * r_T[t];
    dw[i] += float(acc);
  }
}

// Runs after the two kernels above have read dy: dx may overwrite it.
__global__ void rmsnorm_bwd_dx_kernel(const float* x, int64_t T, int64_t D, const float* w, const float* dy,
                                      const double* r_T, const double* c_T, float* dx) {
  GRID_STRIDE(i, T * D) {
    const int64_t t = i / D, j = i % D;
    dx[i] = float(r_T[t] * w[j] * dy[i] - c_T[t] * x[i]);
  }
}

__global__ void swiglu_bwd_kernel(const float* gu, const float* dh, int64_t T, int64_t F, float* dgu) {
  GRID_STRIDE(i, T * F) {
    const int64_t t = i / F, f = i % F;
    const float g = gu[t * 2 * F + f], u = gu[t * 2 * F + F + f];
    const float s = 1.0f / (1.0f + expf(-g));
    dgu[t * 2 * F + f] = dh[i] * u * s * (1.0f + g * (1.0f - s));
    dgu[t * 2 * F + F + f] = dh[i] * (g * s);
  }
}

// Rotation by minus the angle: the transpose of rope_apply.
__global__ void rope_bwd_kernel(float* x, int64_t T, int64_t H, int64_t d, const int32_t* pos, const float* c,
                                const float* s) {
  const int64_t half = d / 2;
  GRID_STRIDE(i, T * H * half) {
    const int64_t j = i % half, th = i / half, t = th / H;
    float* v = x + th * d;
    const float cj = c[int64_t(pos[t]) * half + j], sj = s[int64_t(pos[t]) * half + j];
    const float a = v[j], b = v[j + half];
    v[j] = a * cj + b * sj;
    v[j + half] = b * cj - a * sj;
  }
}

__global__ void gate_kernel(const float* logit, int64_t T, float* gate) {
  GRID_STRIDE(t, T) gate[t] = logit ? 1.0f / (1.0f + expf(-logit[t])) : 1.0f;
}

__global__ void gate_add_kernel(const float* gate, const float* shared, int64_t T, int64_t D, float* y) {
  GRID_STRIDE(i, T * D) y[i] += gate[i / D] * shared[i];
}

// One block per token: dshared = gate dy; dlogit = (dy . shared) gate (1 - gate).
__global__ void gate_bwd_kernel(const float* dy, const float* shared, const float* gate, int64_t D, float* dshared,
                                float* dlogit) {
  const int64_t t = blockIdx.x;
  const float gt = gate[t];
  double dot = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    dshared[t * D + i] = gt * dy[t * D + i];
    dot += double(dy[t * D + i]) * shared[t * D + i];
  }
  dot = detail::block_sum(dot);
  if (dlogit && threadIdx.x == 0) dlogit[t] = float(dot * gt * (1.0f - gt));
}

// max that keeps a NaN (as the CPU's std::max(a, b) + 0 * b): the optimizer refuses a step
// whose maxima are not finite.
__device__ float max_nan(float a, float b) { return fmaxf(a, b) + 0.0f * a + 0.0f * b; }

// The maxima (w, s) of the block, written by thread 0 to out[2 * blockIdx.x].
__device__ void block_maxima(float wm, float sm, float* out) {
  __shared__ float ws[kThreads / 32], ss[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) {
    wm = max_nan(wm, __shfl_xor_sync(0xffffffffu, wm, o));
    sm = max_nan(sm, __shfl_xor_sync(0xffffffffu, sm, o));
  }
  if (threadIdx.x % 32 == 0) ws[threadIdx.x / 32] = wm, ss[threadIdx.x / 32] = sm;
  __syncthreads();
  if (threadIdx.x == 0) {
    float w = 0, s = 0;
    for (int i = 0; i < kThreads / 32; ++i) w = max_nan(w, ws[i]), s = max_nan(s, ss[i]);
    out[2 * blockIdx.x] = w, out[2 * blockIdx.x + 1] = s;
  }
}

__global__ void adamw_kernel(cpu::AdamWScalars c, float* __restrict__ w, float* __restrict__ m, float* __restrict__ v,
                             const float* __restrict__ g, int64_t n, bool decay, bool write, float* block_max) {
  const float keep = decay ? c.keep_decay : 1.0f;
  float wm = 0, sm = 0, vm = 0;
  GRID_STRIDE(i, n) {
    float wi = w[i] * keep;
    const float mi = m[i] * c.b1 + c.a1 * g[i];
    const float vi = v[i] * c.b2 + c.a2 * g[i] * g[i];
    const float denom = sqrtf(vi) / c.bc2_sqrt + c.eps;
    wi = wi + c.neg_step * (mi / denom);
    if (write) w[i] = wi, m[i] = mi, v[i] = vi;
    wm = max_nan(wm, fabsf(wi)), sm = max_nan(sm, fabsf(mi)), vm = max_nan(vm, vi);
  }
  // An overflowing second moment is as fatal to the saved state as a NaN.
  block_maxima(wm, vm <= FLT_MAX ? sm : INFINITY, block_max);
}

__global__ void sgd_kernel(float neg_lr, float wd, float mom, float* __restrict__ w, float* __restrict__ buf,
                           const float* __restrict__ g, int64_t n, bool write, float* block_max) {
  float wm = 0, sm = 0;
  GRID_STRIDE(i, n) {
    float d = wd != 0 ? g[i] + wd * w[i] : g[i];
    if (mom > 0) {
      d = buf[i] * mom + d;
      if (write) buf[i] = d;
      sm = max_nan(sm, fabsf(d));
    }
    const float wi = w[i] + neg_lr * d;
    if (write) w[i] = wi;
    wm = max_nan(wm, fabsf(wi));
  }
  block_maxima(wm, sm, block_max);
}

// Folds the per-block maxima in block order into out[0..2).
__global__ void fold_maxima_kernel(const float* block_max, int nb, float* out) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  float w = 0, s = 0;
  for (int b = 0; b < nb; ++b) w = max_nan(w, block_max[2 * b]), s = max_nan(s, block_max[2 * b + 1]);
  out[0] = w, out[1] = s;
}

// A fixed grid for the updates: a grid-stride loop per thread, one pair of maxima per block.
constexpr unsigned kUpdateBlocks = 1024;

template <class Launch>
cpu::UpdateMaxima run_update(size_t n, cudaStream_t s, const char* op, Launch&& launch) {
  if (n == 0) return {};
  const unsigned nb = blocks_for(int64_t(n)) < kUpdateBlocks ? blocks_for(int64_t(n)) : kUpdateBlocks;
  detail::Scratch part(2 * size_t(nb + 1) * sizeof(float), s);
  float* out = part.as<float>() + 2 * nb;
  launch(nb, part.as<float>());
  check_launch(op);
  fold_maxima_kernel<<<1, 32, 0, s>>>(part.as<float>(), int(nb), out);
  check_launch("fold maxima");
  float host[2];
  check(cudaMemcpyAsync(host, out, sizeof(host), cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync D2H (maxima)");
  check(cudaStreamSynchronize(s), "cudaStreamSynchronize (maxima)");
  return cpu::UpdateMaxima{host[0], host[1]};
}

}  // namespace

void add(float* y, const float* x, int64_t n, Stream stream) {
  if (n <= 0) return;
  add_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(y, x, n);
  check_launch("add");
}

void fill(float* y, float value, int64_t n, Stream stream) {
  if (n <= 0) return;
  fill_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(y, value, n);
  check_launch("fill");
}

void copy(float* y, const float* x, int64_t n, Stream stream) {
  if (n <= 0 || y == x) return;
  check(cudaMemcpyAsync(y, x, size_t(n) * sizeof(float), cudaMemcpyDeviceToDevice, as_stream(stream)),
        "cudaMemcpyAsync D2D (copy)");
}

void rmsnorm_backward(const float* x, int64_t T, int64_t D, const float* w, float eps, const float* dy, float* dx,
                      float* dw, Stream stream) {
  if (T == 0 || D == 0) return;
  const cudaStream_t s = as_stream(stream);
  detail::Scratch rc(2 * size_t(T) * sizeof(double), s);
  double* r_T = rc.as<double>();
  double* c_T = r_T + T;
  rmsnorm_bwd_row_kernel<<<detail::rows_grid(T), kThreads, 0, s>>>(x, D, w, eps, dy, r_T, c_T);
  check_launch("rmsnorm_backward rows");
  rmsnorm_bwd_dw_kernel<<<blocks_for(D), kThreads, 0, s>>>(x, T, D, dy, r_T, dw);
  check_launch("rmsnorm_backward dw");
  rmsnorm_bwd_dx_kernel<<<blocks_for(T * D), kThreads, 0, s>>>(x, T, D, w, dy, r_T, c_T, dx);
  check_launch("rmsnorm_backward dx");
}

void swiglu_backward(const float* gu, const float* dh, int64_t T, int64_t F, float* dgu, Stream stream) {
  if (T * F == 0) return;
  swiglu_bwd_kernel<<<blocks_for(T * F), kThreads, 0, as_stream(stream)>>>(gu, dh, T, F, dgu);
  check_launch("swiglu_backward");
}

void rope_apply_backward(float* dx, int64_t T, int64_t H, int64_t d, const int32_t* pos, const float* c, const float* s,
                         Stream stream) {
  const int64_t n = T * H * (d / 2);
  if (n == 0) return;
  rope_bwd_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(dx, T, H, d, pos, c, s);
  check_launch("rope_apply_backward");
}

void shared_gate_forward(const float* logit, const float* shared, int64_t T, int64_t D, float* gate, float* y,
                         Stream stream) {
  if (T == 0) return;
  const cudaStream_t s = as_stream(stream);
  gate_kernel<<<blocks_for(T), kThreads, 0, s>>>(logit, T, gate);
  check_launch("shared_gate_forward gate");
  if (D == 0) return;
  gate_add_kernel<<<blocks_for(T * D), kThreads, 0, s>>>(gate, shared, T, D, y);
  check_launch("shared_gate_forward add");
}

void shared_gate_backward(const float* dy, const float* shared, const float* gate, int64_t T, int64_t D, float* dshared,
                          float* dlogit, Stream stream) {
  if (T == 0) return;
  gate_bwd_kernel<<<detail::rows_grid(T), kThreads, 0, as_stream(stream)>>>(dy, shared, gate, D, dshared, dlogit);
  check_launch("shared_gate_backward");
}

cpu::UpdateMaxima adamw_update(const cpu::AdamWScalars& c, float* w, float* m, float* v, const float* g, size_t n,
                               bool decay, bool write, Stream stream) {
  const cudaStream_t s = as_stream(stream);
  return run_update(n, s, "adamw_update", [&](unsigned nb, float* part) {
    adamw_kernel<<<nb, kThreads, 0, s>>>(c, w, m, v, g, int64_t(n), decay, write, part);
  });
}

cpu::UpdateMaxima sgd_update(double lr, float weight_decay, float momentum, float* w, float* buf, const float* g,
                             size_t n, bool decay, bool write, Stream stream) {
  const cudaStream_t s = as_stream(stream);
  const float wd = decay ? weight_decay : 0.0f;
  return run_update(n, s, "sgd_update", [&](unsigned nb, float* part) {
    sgd_kernel<<<nb, kThreads, 0, s>>>(float(-lr), wd, momentum, w, buf, g, int64_t(n), write, part);
  });
}

}  // namespace moe::kernels::cuda
