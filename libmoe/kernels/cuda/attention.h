// CUDA twins of the attention forwards (kernels/cpu/attention.h, attention_varlen.h): causal
// grouped-query attention over a key/value cache (decode and prefill with a cache) and over
// packed variable-length sequences (training's THD layout, context parallelism's queries at
// positions). Same layouts and semantics; every pointer is device memory, including the
// VarlenAttention's cu_seqlens, cu_seqlens_k and q_pos.
//
// One kernel serves both, flash-decoding style: a block per (query row, head, key split) keeps a
// running max, sum and weighted value sum in registers (online softmax), so no score matrix is
// ever stored; a query's keys are cut into splits when rows x heads alone cannot fill the GPU (a
// decode step over a long cache), and a second kernel merges the splits in a fixed order. Head
// dims up to 256.
#pragma once
#include <cstdint>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_varlen.h"
#include "kernels/cuda/cuda_ops.h"

namespace moe::kernels::cuda {

inline constexpr int64_t kMaxAttentionHeadDim = 256;

// q_THd [T, nh, d]; k_SGd, v_SGd [S, ng, d] with S >= pos0 + T; out_THd [T, nh, d].
void causal_attention(const cpu::AttentionShape& s, const float* q_THd, const float* k_SGd, const float* v_SGd,
                      float* out_THd, Stream stream = nullptr);

// The forward of cpu::attention_varlen_forward: out [T, nh, d] and each row's log-sum-exp lse
// [T, nh] of the scaled scores. Reads T = cu_seqlens[num_seqs] back from the device first (it
// sizes the grid), so it waits for the stream up to there.
void attention_varlen_forward(const cpu::VarlenAttention& a, const float* q, const float* k, const float* v, float* out,
                              float* lse, Stream stream = nullptr);

}  // namespace moe::kernels::cuda
