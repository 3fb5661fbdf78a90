#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/linear.h"

namespace moe::kernels::cuda {

namespace {

using detail::as_stream;
using detail::check_blas;
using detail::check_launch;
using detail::kThreads;

__device__ inline float widen(__nv_bfloat16 w) { return __bfloat162float(w); }
__device__ inline float widen(__half w) { return __half2float(w); }
__device__ inline float widen(float w) { return w; }

// A warp per weight row n: lanes stride over D (8 weights, 16 bytes, per load when the rows are
// 16-byte aligned), each keeping one partial sum per token; the warp sums them and lane 0 writes.
template <class WT>
__global__ void gemv_half(const float* __restrict__ x, int T, const WT* __restrict__ W, int64_t N, int64_t D,
                          float* __restrict__ y, const float* __restrict__ bias, bool accumulate, bool vec8) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  if (n >= N) return;  // whole warps leave together
  const WT* w = W + n * D;
  float acc[kHalfGemvMaxTokens];
#pragma unroll
  for (int t = 0; t < kHalfGemvMaxTokens; ++t) acc[t] = 0.0f;
  int64_t d = 0;
  if (vec8) {
    for (; d + 8 * 32 <= D; d += 8 * 32) {
      const int64_t c = d + 8 * lane;
      const uint4 raw = *reinterpret_cast<const uint4*>(w + c);
      const WT* h = reinterpret_cast<const WT*>(&raw);
      float wf[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) wf[i] = widen(h[i]);
#pragma unroll
      for (int t = 0; t < kHalfGemvMaxTokens; ++t) {
        if (t >= T) break;
        const float4 x0 = *reinterpret_cast<const float4*>(x + t * D + c);
        const float4 x1 = *reinterpret_cast<const float4*>(x + t * D + c + 4);
        acc[t] += wf[0] * x0.x + wf[1] * x0.y + wf[2] * x0.z + wf[3] * x0.w + wf[4] * x1.x + wf[5] * x1.y +
                  wf[6] * x1.z + wf[7] * x1.w;
      }
    }
  }
  for (int64_t c = d + lane; c < D; c += 32) {  // the tail, or every element when unaligned
    const float wc = widen(w[c]);
#pragma unroll
    for (int t = 0; t < kHalfGemvMaxTokens; ++t)
      if (t < T) acc[t] += wc * x[t * D + c];
  }
#pragma unroll
  for (int t = 0; t < kHalfGemvMaxTokens; ++t) {
    if (t >= T) break;
    float s = acc[t];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) {
      if (bias) s += bias[n];
      float* out = y + int64_t(t) * N + n;
      *out = accumulate ? *out + s : s;
    }
  }
}

template <class WT>
__global__ void round_to(const float* __restrict__ x, int64_t n, WT* __restrict__ out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    if constexpr (std::is_same_v<WT, __half>) out[i] = __float2half_rn(x[i]);
    else out[i] = __float2bfloat16_rn(x[i]);
  }
}

template <class WT>
void run(const float* x, int64_t T, const WT* W, cudaDataType_t wtype, int64_t N, int64_t D, float* y,
         const float* bias, bool accumulate, cudaStream_t s) {
  if (T <= kHalfGemvMaxTokens) {
    const bool vec8 =
        D % 8 == 0 && reinterpret_cast<uintptr_t>(W) % 16 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
    const int64_t blocks = (N + kThreads / 32 - 1) / (kThreads / 32);
    MOE_ASSERT(blocks <= 0x7fffffff, "linear: {} rows exceed one CUDA grid", N);
    gemv_half<WT><<<unsigned(blocks), kThreads, 0, s>>>(x, int(T), W, N, D, y, bias, accumulate, vec8);
    check_launch("linear (half GEMV)");
    return;
  }
  detail::Scratch xh(size_t(T * D) * sizeof(WT), s);
  round_to<WT><<<detail::blocks_for(T * D), kThreads, 0, s>>>(x, T * D, xh.as<WT>());
  check_launch("linear (round x)");
  const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  // Column-major view, as linear_f32: yᵀ[N,T] = (W as col-major [D,N])ᵀ . (x as col-major [D,T]).
  using detail::blas_dim, detail::blas_ld;
  check_blas(cublasGemmEx(detail::cublas(s), CUBLAS_OP_T, CUBLAS_OP_N, blas_dim(N, "N"), blas_dim(T, "T"),
                          blas_dim(D, "D"), &one, W, wtype, blas_ld(D, "D"), xh.as<WT>(), wtype, blas_ld(D, "D"), &beta,
                          y, CUDA_R_32F, blas_ld(N, "N"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
             "GemmEx (linear, half weights)");
  if (bias) detail::add_bias(y, bias, T, N, s);
}

// Decode's experts by id: one GEMV per (token, slot) pair p = blockIdx.y, a warp per weight row
// n. The pair's expert id is read here, on the device, and its weights found at W0 + id x
// `stride` (a layer's experts lie side by side); x's row is p / x_div (the token, for fc1) or p
// (fc2). A pair without an expert (id < 0) writes zeros.
template <class WT>
__global__ void gemv_by_id(const float* __restrict__ x, int64_t x_div, const WT* __restrict__ W0, int64_t stride,
                           const int32_t* __restrict__ ids, int64_t N, int64_t D, float* __restrict__ y) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32, p = blockIdx.y;
  if (n >= N) return;  // whole warps leave together
  const int32_t e = ids[p];
  float s = 0.0f;
  if (e >= 0) {  // the same for the whole warp
    const WT* w = W0 + int64_t(e) * stride + n * D;
    const float* xr = x + (p / x_div) * D;
    for (int64_t c = lane; c < D; c += 32) s += widen(w[c]) * xr[c];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  }
  if (lane == 0) y[p * N + n] = s;
}

// y_TD[t] += sum_k weight_TK[t, k] y_PD[t K + k] over the pairs with an expert, k ascending (the
// CPU's order), a thread per element.
__global__ void combine_pairs(const float* __restrict__ yp, const int32_t* __restrict__ ids,
                              const float* __restrict__ weight, int64_t T, int64_t K, int64_t D,
                              float* __restrict__ y) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < T * D; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / D, d = i % D;
    float acc = y[i];
    for (int64_t k = 0; k < K; ++k) {
      const int64_t p = t * K + k;
      if (ids[p] >= 0) acc += weight[p] * yp[p * D + d];
    }
    y[i] = acc;
  }
}

template <class WT>
void by_id(const float* x, int64_t T, int64_t K, int64_t D, int64_t F, const int32_t* ids, const float* weight,
           const void* fc1, int64_t fc1_stride, const void* fc2, int64_t fc2_stride, float* gu, float* h, float* yp,
           float* y, cudaStream_t s) {
  const int64_t P = T * K;
  MOE_ASSERT(P <= 65535, "experts_by_id: {} pairs exceed one CUDA grid's y dimension", P);
  const auto grid = [&](int64_t N) { return dim3(unsigned((N + kThreads / 32 - 1) / (kThreads / 32)), unsigned(P)); };
  gemv_by_id<WT><<<grid(2 * F), kThreads, 0, s>>>(x, K, static_cast<const WT*>(fc1), fc1_stride, ids, 2 * F, D, gu);
  check_launch("experts_by_id (fc1)");
  swiglu(gu, P, F, h, s);
  gemv_by_id<WT><<<grid(D), kThreads, 0, s>>>(h, 1, static_cast<const WT*>(fc2), fc2_stride, ids, D, F, yp);
  check_launch("experts_by_id (fc2)");
  combine_pairs<<<detail::blocks_for(T * D), kThreads, 0, s>>>(yp, ids, weight, T, K, D, y);
  check_launch("experts_by_id (combine)");
}

}  // namespace

void experts_by_id(const float* x, int64_t T, int64_t K, int64_t D, int64_t F, const int32_t* ids, const float* weight,
                   const void* fc1, int64_t fc1_stride, const void* fc2, int64_t fc2_stride, DType wtype, float* gu,
                   float* h, float* yp, float* y, Stream stream) {
  if (T * K == 0) return;
  const cudaStream_t s = as_stream(stream);
  const auto args = [&](auto tag) {
    using WT = decltype(tag);
    by_id<WT>(x, T, K, D, F, ids, weight, fc1, fc1_stride, fc2, fc2_stride, gu, h, yp, y, s);
  };
  if (wtype == DType::F32) args(float{});
  else if (wtype == DType::BF16) args(__nv_bfloat16{});
  else if (wtype == DType::F16) args(__half{});
  else throw_internal("experts_by_id: weights of dtype {}", dtype_name(wtype));
}

bool linear_grouped(const float* x, int64_t groups, const int64_t* rows, const int64_t* first_row, const void* const* W,
                    DType wtype, int64_t N, int64_t D, float* y, Stream stream) {
  const cudaStream_t s = as_stream(stream);
  MOE_ASSERT(groups <= 0x7fffffff, "linear_grouped: {} groups", groups);
  const int G = int(groups);
  if (G == 0) return true;
  int64_t R = 0;
  for (int g = 0; g < G; ++g) R = std::max(R, first_row[g] + rows[g]);
  const bool half = wtype != DType::F32;
  const cudaDataType_t ab = wtype == DType::BF16 ? CUDA_R_16BF : wtype == DType::F16 ? CUDA_R_16F : CUDA_R_32F;
  const size_t es = dtype_size(wtype);
  // Half weights: x rounded to their dtype once for every group (as linear_half's GEMM path).
  detail::Scratch xh(half ? size_t(R * D) * es : 0, s);
  if (half) {
    if (wtype == DType::BF16)
      round_to<__nv_bfloat16><<<detail::blocks_for(R * D), kThreads, 0, s>>>(x, R * D, xh.as<__nv_bfloat16>());
    else round_to<__half><<<detail::blocks_for(R * D), kThreads, 0, s>>>(x, R * D, xh.as<__half>());
    check_launch("linear_grouped (round x)");
  }
  const char* xb = half ? xh.as<const char>() : reinterpret_cast<const char*>(x);
  // One group per product (their T differ); column-major as linear_f32: yᵀ[N,T] = Wᵀ . xᵀ.
  using detail::blas_dim, detail::blas_ld;
  std::vector<cublasOperation_t> ta(size_t(G), CUBLAS_OP_T), tb(size_t(G), CUBLAS_OP_N);
  const size_t g_count = static_cast<size_t>(G);
  std::vector<int> m(g_count, blas_dim(N, "N")), n(g_count, 0), k(g_count, blas_dim(D, "D")), one(g_count, 1);
  std::vector<int> lda(size_t(G), blas_ld(D, "D")), ldc(size_t(G), blas_ld(N, "N"));
  std::vector<float> alpha(size_t(G), 1.0f), beta(size_t(G), 0.0f);
  std::vector<const void*> ptrs(size_t(3 * G));  // A (weights), B (x), C (y): device arrays for cuBLAS
  for (int g = 0; g < G; ++g) {
    n[size_t(g)] = blas_dim(rows[g], "T");
    ptrs[size_t(g)] = W[g];
    ptrs[size_t(G + g)] = xb + size_t(first_row[g] * D) * (half ? es : sizeof(float));
    ptrs[size_t(2 * G + g)] = y + first_row[g] * N;
  }
  detail::Scratch dev_ptrs(ptrs.size() * sizeof(void*), s);
  // From pageable memory: returns once the bytes are staged, so `ptrs` may go when this returns.
  detail::check(
      cudaMemcpyAsync(dev_ptrs.as<void>(), ptrs.data(), ptrs.size() * sizeof(void*), cudaMemcpyHostToDevice, s),
      "cudaMemcpyAsync (grouped GEMM pointers)");
  const auto* A = dev_ptrs.as<const void* const>();
  const cublasStatus_t st = cublasGemmGroupedBatchedEx(
      detail::cublas(s), ta.data(), tb.data(), m.data(), n.data(), k.data(), alpha.data(), A, ab, lda.data(), A + G,
      half ? ab : CUDA_R_32F, lda.data(), beta.data(), const_cast<void* const*>(A + 2 * G), CUDA_R_32F, ldc.data(), G,
      one.data(), CUBLAS_COMPUTE_32F);
  // A cuBLAS without this type combination says NOT_SUPPORTED (some builds INVALID_VALUE): the
  // caller runs the products one by one, which computes the same.
  if (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE) return false;
  check_blas(st, "GemmGroupedBatchedEx (linear_grouped)");
  return true;
}

void linear_half(const float* x, int64_t T, const void* W, DType wtype, int64_t N, int64_t D, float* y,
                 const float* bias, bool accumulate, Stream stream) {
  if (T == 0 || N == 0) return;
  const cudaStream_t s = as_stream(stream);
  if (wtype == DType::BF16) run(x, T, static_cast<const __nv_bfloat16*>(W), CUDA_R_16BF, N, D, y, bias, accumulate, s);
  else if (wtype == DType::F16) run(x, T, static_cast<const __half*>(W), CUDA_R_16F, N, D, y, bias, accumulate, s);
  else throw_internal("linear_half takes bf16 or f16 weights, not {}", dtype_name(wtype));
}

}  // namespace moe::kernels::cuda
