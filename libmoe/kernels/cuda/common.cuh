// What every CUDA op file shares (device code only, never included by host-only callers):
// error checks that name the failed call, the stream cast, grid sizes, stream-ordered scratch
// memory, the cuBLAS handle and block reductions.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/error.h"
#include "kernels/cuda/cuda_ops.h"

namespace moe::kernels::cuda::detail {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw_internal("CUDA {} failed: {}", what, cudaGetErrorString(e));
}
inline void check_launch(const char* op) { check(cudaGetLastError(), op); }
inline void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw_internal("cuBLAS {} failed: status {}", what, int(s));
}

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

constexpr int kThreads = 256;  // threads per block everywhere: a multiple of the warp size
// Blocks for one thread per element; grid-stride loops cover anything past the 2^31 - 1 cap.
inline unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return unsigned(b < 1 ? 1 : (b > 0x7fffffff ? 0x7fffffff : b));
}
// Row-wise kernels launch one block per row; rows past 2^31 - 1 are not supported.
inline unsigned rows_grid(int64_t T) {
  MOE_ASSERT(T <= 0x7fffffff, "{} rows exceed one CUDA grid", T);
  return unsigned(T);
}

// The one cuBLAS handle of the process (created on first use), bound to `stream` per call.
cublasHandle_t cublas(cudaStream_t stream);
// cuBLAS takes int dimensions.
inline int blas_dim(int64_t v, const char* what) {
  MOE_ASSERT(v >= 0 && v <= 0x7fffffff, "{} = {} does not fit a cuBLAS dimension", what, v);
  return int(v);
}
// A leading dimension: cuBLAS wants at least 1, even for an empty operand.
inline int blas_ld(int64_t v, const char* what) { return blas_dim(v > 0 ? v : 1, what); }
// y_TN[t] += bias_N on the stream (the projections' bias).
void add_bias(float* y_TN, const float* bias_N, int64_t T, int64_t N, cudaStream_t stream);

// Stream-ordered temporaries (kernels/cuda/cuda_ops.h).
using Scratch = StreamBuffer;

// The sum of v over the block (blockDim.x == kThreads), returned to every thread: warp
// shuffles, then one value per warp through shared memory, summed in a fixed order so the
// result is deterministic. Every thread of the block must call it.
template <class T>
__device__ T block_sum(T v) {
  __shared__ T warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // a previous call's readers are done with warp_sums
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  return total;
}

}  // namespace moe::kernels::cuda::detail
