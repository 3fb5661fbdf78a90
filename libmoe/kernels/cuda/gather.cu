#include <cuda_fp16.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gather.h"

namespace moe::kernels::cuda {

using detail::as_stream;
using detail::blocks_for;
using detail::check;
using detail::check_launch;
using detail::kThreads;

namespace {

#define GRID_STRIDE(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

// DType as the kernels see it (core/dtype.h's enum is host code's).
enum class Elem : int { F32, BF16, F16 };

__device__ float widen(const void* table, Elem e, int64_t i) {
  if (e == Elem::F32) return static_cast<const float*>(table)[i];
  const unsigned short bits = static_cast<const unsigned short*>(table)[i];
  if (e == Elem::BF16) return __uint_as_float(unsigned(bits) << 16);  // bf16 is the top half of an f32
  return __half2float(__ushort_as_half(bits));
}

__global__ void embedding_gather_kernel(const void* table, Elem e, int64_t V, int64_t D, const int32_t* ids, int64_t T,
                                        float* out) {
  GRID_STRIDE(i, T * D) {
    const int64_t t = i / D, j = i % D;
    const int32_t id = ids[t];
    out[i] = id >= 0 && id < V ? widen(table, e, int64_t(id) * D + j) : __int_as_float(0x7fc00000);  // NaN
  }
}

// One thread per column walking the tokens in order (the CPU's order for repeated ids).
__global__ void embedding_scatter_add_kernel(const float* dout, const int32_t* ids, int64_t T, int64_t D,
                                             float* dtable) {
  GRID_STRIDE(j, D) {
    for (int64_t t = 0; t < T; ++t) dtable[int64_t(ids[t]) * D + j] += dout[t * D + j];
  }
}

template <bool kGather>
__global__ void rows_kernel(const float* x, int64_t D, const int64_t* rows, int64_t R, float* y) {
  GRID_STRIDE(i, R * D) {
    const int64_t r = i / D, j = i % D;
    if (kGather) y[i] = x[rows[r] * D + j];
    else y[rows[r] * D + j] = x[i];
  }
}

// One thread per element of the fused row: group g holds [q (r heads); k; v], d values each.
template <bool kSplit>
__global__ void qkv_kernel(float* qkv, int64_t T, int64_t nh, int64_t ng, int64_t d, float* q, float* k, float* v) {
  const int64_t r = nh / ng, group = (r + 2) * d, rows = ng * group;
  GRID_STRIDE(i, T * rows) {
    const int64_t t = i / rows, g = (i % rows) / group, w = (i % rows) % group;
    float* other;
    if (w < r * d) other = q + (t * nh + g * r) * d + w;
    else if (w < (r + 1) * d) other = k + (t * ng + g) * d + (w - r * d);
    else other = v + (t * ng + g) * d + (w - (r + 1) * d);
    if (kSplit) *other = qkv[i];
    else qkv[i] = *other;
  }
}

// Sets bit 1 of *flag for an expert id outside [-1, E).
__global__ void plan_check_kernel(const int32_t* expert, int64_t n, int64_t E, unsigned long long* flag) {
  GRID_STRIDE(i, n) {
    if (expert[i] < -1 || expert[i] >= E) atomicOr(flag, 1ull);
  }
}

// One thread per expert counts its pairs (ids are validated first).
__global__ void plan_count_kernel(const int32_t* expert, int64_t n, int64_t E, int64_t* counts) {
  GRID_STRIDE(e, E) {
    int64_t c = 0;
    for (int64_t i = 0; i < n; ++i) c += expert[i] == e;
    counts[e] = c;
  }
}

// One thread: block offsets, the row count into info[1], bit 2 of info[0] for a count over pad_to.
__global__ void plan_offsets_kernel(const int64_t* counts, int64_t E, int64_t pad_to, int64_t* offsets,
                                    unsigned long long* info) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int64_t rows = 0;
  for (int64_t e = 0; e < E; ++e) {
    if (pad_to > 0 && counts[e] > pad_to) info[0] |= 2ull;
    offsets[e] = rows;
    rows += pad_to > 0 ? pad_to : counts[e];
  }
  info[1] = static_cast<unsigned long long>(rows);
}

__global__ void fill_i64_kernel(int64_t* y, int64_t v, int64_t n) { GRID_STRIDE(i, n) y[i] = v; }

// One thread per expert places its pairs in token order (stable, as the CPU).
__global__ void plan_place_kernel(const int32_t* expert, int64_t n, int64_t E, const int64_t* offsets,
                                  int64_t* row_slot) {
  GRID_STRIDE(e, E) {
    int64_t j = offsets[e];
    for (int64_t i = 0; i < n; ++i)
      if (expert[i] == e) row_slot[j++] = i;
  }
}

__global__ void permute_kernel(const float* x, int64_t D, const int64_t* row_slot, int64_t R, int64_t K, float* xp) {
  GRID_STRIDE(i, R * D) {
    const int64_t row = i / D, j = i % D, slot = row_slot[row];
    xp[i] = slot < 0 ? 0.0f : x[slot / K * D + j];
  }
}

// One thread per column walking the rows in order, as the CPU: a token's rows add in row order.
__global__ void permute_bwd_kernel(const float* dxp, int64_t D, const int64_t* row_slot, int64_t R, int64_t K,
                                   float* dx) {
  GRID_STRIDE(j, D) {
    for (int64_t row = 0; row < R; ++row) {
      const int64_t slot = row_slot[row];
      if (slot >= 0) dx[slot / K * D + j] += dxp[row * D + j];
    }
  }
}

__global__ void unpermute_kernel(const float* yp, int64_t D, const int64_t* row_slot, int64_t R, int64_t K,
                                 const float* weight, float* out) {
  GRID_STRIDE(j, D) {
    for (int64_t row = 0; row < R; ++row) {
      const int64_t slot = row_slot[row];
      if (slot >= 0) out[slot / K * D + j] += weight[slot] * yp[row * D + j];
    }
  }
}

// One block per row: dy_perm = weight * dout[token]; dweight[slot] = dout[token] . y_perm[row] in
// double (each slot has at most one row, so no two blocks write the same dweight).
__global__ void unpermute_bwd_kernel(const float* dout, const float* yp, int64_t D, const int64_t* row_slot, int64_t K,
                                     const float* weight, float* dyp, float* dweight) {
  const int64_t row = blockIdx.x, slot = row_slot[row];  // the same for the whole block
  float* d = dyp + row * D;
  if (slot < 0) {
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) d[j] = 0.0f;
    return;
  }
  const float wt = weight[slot];
  const float* g = dout + slot / K * D;
  const float* y = yp + row * D;
  double dot = 0;
  for (int64_t j = threadIdx.x; j < D; j += blockDim.x) d[j] = wt * g[j], dot += double(g[j]) * y[j];
  dot = detail::block_sum(dot);
  if (threadIdx.x == 0) dweight[slot] = float(dot);
}

}  // namespace

void embedding_gather(const void* table, DType dtype, int64_t V, int64_t D, const int32_t* ids, int64_t T, float* out,
                      Stream stream) {
  if (T * D == 0) return;
  const Elem e = dtype == DType::F32 ? Elem::F32 : dtype == DType::BF16 ? Elem::BF16 : Elem::F16;
  embedding_gather_kernel<<<blocks_for(T * D), kThreads, 0, as_stream(stream)>>>(table, e, V, D, ids, T, out);
  check_launch("embedding_gather");
}

void embedding_scatter_add(const float* dout, const int32_t* ids, int64_t T, int64_t D, float* dtable, Stream stream) {
  if (T == 0 || D == 0) return;
  embedding_scatter_add_kernel<<<blocks_for(D), kThreads, 0, as_stream(stream)>>>(dout, ids, T, D, dtable);
  check_launch("embedding_scatter_add");
}

void gather_rows(const float* x, int64_t D, const int64_t* rows, int64_t R, float* y, Stream stream) {
  if (R * D == 0) return;
  rows_kernel<true><<<blocks_for(R * D), kThreads, 0, as_stream(stream)>>>(x, D, rows, R, y);
  check_launch("gather_rows");
}

void scatter_rows(const float* x, int64_t D, const int64_t* rows, int64_t R, float* y, Stream stream) {
  if (R * D == 0) return;
  rows_kernel<false><<<blocks_for(R * D), kThreads, 0, as_stream(stream)>>>(x, D, rows, R, y);
  check_launch("scatter_rows");
}

void qkv_split(const float* qkv, int64_t T, int64_t nh, int64_t ng, int64_t d, float* q, float* k, float* v,
               Stream stream) {
  const int64_t n = T * ng * (nh / ng + 2) * d;
  if (n == 0) return;
  // The split only reads qkv; the kernel is shared with the merge, which writes it.
  qkv_kernel<true><<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(const_cast<float*>(qkv), T, nh, ng, d, q, k, v);
  check_launch("qkv_split");
}

void qkv_merge(const float* q, const float* k, const float* v, int64_t T, int64_t nh, int64_t ng, int64_t d, float* qkv,
               Stream stream) {
  const int64_t n = T * ng * (nh / ng + 2) * d;
  if (n == 0) return;
  // The merge only reads q, k, v (see qkv_split).
  qkv_kernel<false><<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(qkv, T, nh, ng, d, const_cast<float*>(q),
                                                                       const_cast<float*>(k), const_cast<float*>(v));
  check_launch("qkv_merge");
}

int64_t permute_plan(const int32_t* expert, int64_t T, int64_t K, int64_t E, int64_t pad_to, int64_t* counts,
                     int64_t* offsets, int64_t* row_slot, Stream stream) {
  const cudaStream_t s = as_stream(stream);
  const int64_t n = T * K;
  if (E == 0) return 0;
  detail::Scratch info_buf(2 * sizeof(unsigned long long), s);
  auto* info = info_buf.as<unsigned long long>();  // [0]: error bits, [1]: rows
  check(cudaMemsetAsync(info, 0, 2 * sizeof(unsigned long long), s), "cudaMemsetAsync (permute_plan)");
  if (n > 0) {
    plan_check_kernel<<<blocks_for(n), kThreads, 0, s>>>(expert, n, E, info);
    check_launch("permute_plan check");
  }
  plan_count_kernel<<<blocks_for(E), kThreads, 0, s>>>(expert, n, E, counts);
  check_launch("permute_plan count");
  plan_offsets_kernel<<<1, 32, 0, s>>>(counts, E, pad_to, offsets, info);
  check_launch("permute_plan offsets");
  unsigned long long host[2];
  check(cudaMemcpyAsync(host, info, sizeof(host), cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync D2H (permute_plan)");
  check(cudaStreamSynchronize(s), "cudaStreamSynchronize (permute_plan)");
  MOE_ASSERT(!(host[0] & 1ull), "router chose an expert outside [-1, {}) (CUDA permute_plan)", E);
  MOE_ASSERT(!(host[0] & 2ull), "an expert holds more rows than its capacity {} (CUDA permute_plan)", pad_to);
  const auto rows = int64_t(host[1]);
  if (rows > 0) {
    fill_i64_kernel<<<blocks_for(rows), kThreads, 0, s>>>(row_slot, -1, rows);
    check_launch("permute_plan fill");
    plan_place_kernel<<<blocks_for(E), kThreads, 0, s>>>(expert, n, E, offsets, row_slot);
    check_launch("permute_plan place");
  }
  return rows;
}

void permute(const float* x, int64_t D, const int64_t* row_slot, int64_t R, int64_t K, float* xp, Stream stream) {
  if (R * D == 0) return;
  permute_kernel<<<blocks_for(R * D), kThreads, 0, as_stream(stream)>>>(x, D, row_slot, R, K, xp);
  check_launch("permute");
}

void permute_backward_add(const float* dxp, int64_t D, const int64_t* row_slot, int64_t R, int64_t K, float* dx,
                          Stream stream) {
  if (R == 0 || D == 0) return;
  permute_bwd_kernel<<<blocks_for(D), kThreads, 0, as_stream(stream)>>>(dxp, D, row_slot, R, K, dx);
  check_launch("permute_backward_add");
}

void unpermute_add(const float* yp, int64_t D, const int64_t* row_slot, int64_t R, int64_t K, const float* weight,
                   float* out, Stream stream) {
  if (R == 0 || D == 0) return;
  unpermute_kernel<<<blocks_for(D), kThreads, 0, as_stream(stream)>>>(yp, D, row_slot, R, K, weight, out);
  check_launch("unpermute_add");
}

void unpermute_add_backward(const float* dout, const float* yp, int64_t D, const int64_t* row_slot, int64_t R,
                            int64_t T, int64_t K, const float* weight, float* dyp, float* dweight, Stream stream) {
  const cudaStream_t s = as_stream(stream);
  if (T * K > 0)  // all-zero bits are 0.0f: slots without a row (dropped) keep a zero gradient
    check(cudaMemsetAsync(dweight, 0, size_t(T * K) * sizeof(float), s), "cudaMemsetAsync (unpermute_add_backward)");
  if (R == 0) return;
  unpermute_bwd_kernel<<<detail::rows_grid(R), kThreads, 0, s>>>(dout, yp, D, row_slot, K, weight, dyp, dweight);
  check_launch("unpermute_add_backward");
}

}  // namespace moe::kernels::cuda
