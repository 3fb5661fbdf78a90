#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

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

}  // namespace

void linear_half(const float* x, int64_t T, const void* W, DType wtype, int64_t N, int64_t D, float* y,
                 const float* bias, bool accumulate, Stream stream) {
  if (T == 0 || N == 0) return;
  const cudaStream_t s = as_stream(stream);
  if (wtype == DType::BF16) run(x, T, static_cast<const __nv_bfloat16*>(W), CUDA_R_16BF, N, D, y, bias, accumulate, s);
  else if (wtype == DType::F16) run(x, T, static_cast<const __half*>(W), CUDA_R_16F, N, D, y, bias, accumulate, s);
  else throw_internal("linear_half takes bf16 or f16 weights, not {}", dtype_name(wtype));
}

}  // namespace moe::kernels::cuda
