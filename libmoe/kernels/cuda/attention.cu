#include <algorithm>
#include <cmath>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/common.cuh"

namespace moe::kernels::cuda {

namespace {

using detail::as_stream;
using detail::check;
using detail::check_launch;

constexpr int kWarps = 4;                                // warps per block, each over every kWarps-th key
constexpr int kDimsPerLane = kMaxAttentionHeadDim / 32;  // head dims a lane holds (d <= 256)

// Where a query row's keys are: rows key0 .. key0 + n - 1 of k and v.
struct CacheKeys {  // causal over a cache: query t at position pos0 + t sees keys 0 .. pos0 + t
  int64_t pos0;
  __device__ void operator()(int64_t t, int64_t* key0, int64_t* n) const {
    *key0 = 0;
    *n = pos0 + t + 1;
  }
};

struct VarlenKeys {      // packed sequences: the query's own sequence, up to its position in it
  const int32_t* cu;     // [S + 1] query rows
  const int32_t* cu_k;   // [S + 1] key rows, or null: the query rows
  const int32_t* q_pos;  // [T] position in the sequence, or null: the row in it
  int64_t S;
  __device__ void operator()(int64_t t, int64_t* key0, int64_t* n) const {
    int64_t lo = 0, hi = S - 1;  // the last sequence starting at or before t (empty ones skipped)
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (cu[mid] <= t) lo = mid;
      else hi = mid - 1;
    }
    const int64_t pos = q_pos ? q_pos[t] : t - cu[lo];
    *key0 = cu_k ? cu_k[lo] : cu[lo];
    *n = pos + 1;
  }
};

struct Shape {
  int64_t nh, ng, d;
  float scale;
  int splits;
};

// One block per (query row, head) in blockIdx.x and key split in blockIdx.y. Each warp runs the
// online softmax over its keys (lanes split the head dim; the score is a warp sum), then the
// block merges its warps. With one split it writes out (and lse); otherwise its partial max,
// sum and weighted values go to part_* for merge_splits.
template <class Keys>
__global__ void attend(Shape s, Keys keys, const float* __restrict__ q, const float* __restrict__ k,
                       const float* __restrict__ v, float* __restrict__ out, float* __restrict__ lse,
                       float* __restrict__ part_m, float* __restrict__ part_l, float* __restrict__ part_acc) {
  const int64_t row_head = blockIdx.x, t = row_head / s.nh, h = row_head % s.nh;
  const int64_t g = h / (s.nh / s.ng);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int64_t key0 = 0, n = 0;
  keys(t, &key0, &n);
  const int64_t per_split = (n + s.splits - 1) / s.splits;
  const int64_t b = min(n, int64_t(blockIdx.y) * per_split), e = min(n, b + per_split);

  float qr[kDimsPerLane], acc[kDimsPerLane];
  const float* qh = q + row_head * s.d;
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) {
    const int64_t c = lane + 32 * i;
    qr[i] = c < s.d ? qh[c] : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = b + warp; j < e; j += kWarps) {
    const int64_t kv = ((key0 + j) * s.ng + g) * s.d;
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < kDimsPerLane; ++i) {
      const int64_t c = lane + 32 * i;
      if (c < s.d) dot += qr[i] * k[kv + c];
    }
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    const float score = dot * s.scale, m_new = fmaxf(m, score);
    const float corr = expf(m - m_new), p = expf(score - m_new);  // corr = 0 for the first key
    l = l * corr + p;
#pragma unroll
    for (int i = 0; i < kDimsPerLane; ++i) {
      const int64_t c = lane + 32 * i;
      acc[i] = acc[i] * corr + (c < s.d ? p * v[kv + c] : 0.0f);
    }
    m = m_new;
  }

  // Merge the warps: each publishes (m, l, acc); every thread then combines them in warp order.
  __shared__ float sm[kWarps], sl[kWarps], sacc[kWarps][kMaxAttentionHeadDim];
  if (lane == 0) sm[warp] = m, sl[warp] = l;
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) {
    const int64_t c = lane + 32 * i;
    if (c < s.d) sacc[warp][c] = acc[i];
  }
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm[w]);
  float L = 0.0f;
  for (int w = 0; w < kWarps; ++w)
    if (sl[w] > 0.0f) L += sl[w] * expf(sm[w] - M);
  const int64_t part = row_head * s.splits + blockIdx.y;
  for (int64_t c = threadIdx.x; c < s.d; c += blockDim.x) {
    float a = 0.0f;
    for (int w = 0; w < kWarps; ++w)
      if (sl[w] > 0.0f) a += sacc[w][c] * expf(sm[w] - M);
    if (s.splits == 1) out[row_head * s.d + c] = a / L;  // n >= 1: a row sees at least itself
    else part_acc[part * s.d + c] = a;
  }
  if (threadIdx.x == 0) {
    if (s.splits == 1) {
      if (lse) lse[row_head] = M + logf(L);
    } else {
      part_m[part] = M, part_l[part] = L;  // an empty split: -inf and 0, skipped by the merge
    }
  }
}

// out = the splits' weighted values over their summed weights, splits merged in order.
__global__ void merge_splits(Shape s, const float* __restrict__ part_m, const float* __restrict__ part_l,
                             const float* __restrict__ part_acc, float* __restrict__ out, float* __restrict__ lse) {
  const int64_t row_head = blockIdx.x, p0 = row_head * s.splits;
  float M = -INFINITY;
  for (int i = 0; i < s.splits; ++i) M = fmaxf(M, part_m[p0 + i]);
  float L = 0.0f;
  for (int i = 0; i < s.splits; ++i)
    if (part_l[p0 + i] > 0.0f) L += part_l[p0 + i] * expf(part_m[p0 + i] - M);
  for (int64_t c = threadIdx.x; c < s.d; c += blockDim.x) {
    float a = 0.0f;
    for (int i = 0; i < s.splits; ++i)
      if (part_l[p0 + i] > 0.0f) a += part_acc[(p0 + i) * s.d + c] * expf(part_m[p0 + i] - M);
    out[row_head * s.d + c] = a / L;
  }
  if (threadIdx.x == 0 && lse) lse[row_head] = M + logf(L);
}

int multiprocessors() {
  static const int n = [] {
    int dev = 0, count = 0;
    check(cudaGetDevice(&dev), "cudaGetDevice");
    check(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
    return count;
  }();
  return n;
}

template <class Keys>
void run(Shape s, Keys keys, int64_t T, int64_t max_keys, const float* q, const float* k, const float* v, float* out,
         float* lse, cudaStream_t stream) {
  MOE_ASSERT(s.d >= 1 && s.d <= kMaxAttentionHeadDim, "CUDA attention takes head dims 1 to {}, not {}",
             kMaxAttentionHeadDim, s.d);
  MOE_ASSERT(s.ng >= 1 && s.nh % s.ng == 0, "{} query heads do not split into {} groups", s.nh, s.ng);
  if (T == 0) return;
  const int64_t blocks = T * s.nh;
  MOE_ASSERT(blocks <= 0x7fffffff, "{} rows x {} heads exceed one CUDA grid", T, s.nh);
  // Splits: enough blocks for two waves over the GPU, each split at least 128 keys, at most 64.
  const int64_t want = (2 * int64_t(multiprocessors()) + blocks - 1) / blocks;
  s.splits = int(std::max<int64_t>(1, std::min<int64_t>({want, (max_keys + 127) / 128, 64})));
  const dim3 grid(unsigned(blocks), unsigned(s.splits)), block(32 * kWarps);
  if (s.splits == 1) {
    attend<<<grid, block, 0, stream>>>(s, keys, q, k, v, out, lse, nullptr, nullptr, nullptr);
    check_launch("attention");
    return;
  }
  const int64_t parts = blocks * s.splits;
  detail::Scratch pm(size_t(parts) * sizeof(float), stream), pl(size_t(parts) * sizeof(float), stream),
      pacc(size_t(parts * s.d) * sizeof(float), stream);
  attend<<<grid, block, 0, stream>>>(s, keys, q, k, v, out, lse, pm.as<float>(), pl.as<float>(), pacc.as<float>());
  check_launch("attention (splits)");
  merge_splits<<<unsigned(blocks), block, 0, stream>>>(s, pm.as<float>(), pl.as<float>(), pacc.as<float>(), out, lse);
  check_launch("attention merge");
}

}  // namespace

void causal_attention(const cpu::AttentionShape& a, const float* q_THd, const float* k_SGd, const float* v_SGd,
                      float* out_THd, Stream stream) {
  const Shape s{a.nh, a.ng, a.d, a.scale, 1};
  run(s, CacheKeys{a.pos0}, a.T, a.pos0 + a.T, q_THd, k_SGd, v_SGd, out_THd, nullptr, as_stream(stream));
}

void attention_varlen_forward(const cpu::VarlenAttention& a, const float* q, const float* k, const float* v, float* out,
                              float* lse, Stream stream) {
  if (a.num_seqs == 0) return;
  int32_t T = 0;
  check(cudaMemcpyAsync(&T, a.cu_seqlens + a.num_seqs, sizeof(T), cudaMemcpyDeviceToHost, as_stream(stream)),
        "cudaMemcpyAsync (cu_seqlens)");
  check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
  const Shape s{a.nh, a.ng, a.d, a.scale, 1};
  // One split per query: prefill and training have rows x heads enough to fill the GPU.
  run(s, VarlenKeys{a.cu_seqlens, a.cu_seqlens_k, a.q_pos, a.num_seqs}, T, 1, q, k, v, out, lse, as_stream(stream));
}

}  // namespace moe::kernels::cuda
