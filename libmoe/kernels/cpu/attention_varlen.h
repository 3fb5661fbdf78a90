// Causal grouped-query attention over packed variable-length sequences (CPU, fp32), forward
// and backward, for training. Tokens of all sequences are concatenated; cu_seqlens marks where
// each starts, and no token attends across a boundary (Megatron-SWIFT's padding-free THD
// layout). The forward keeps only the output and each row's log-sum-exp; the backward
// recomputes the probabilities from them, as flash attention does.
#pragma once
#include <cstdint>

namespace moe::kernels::cpu {

struct VarlenAttention {
  int64_t nh, ng, d;          // query heads, key/value groups, head dim
  float scale;                // usually 1/sqrt(d)
  const int32_t* cu_seqlens;  // [S + 1], 0 .. T
  int64_t num_seqs;           // S
};

// q_THd [T, nh, d]; k_TGd, v_TGd [T, ng, d]; out_THd [T, nh, d]; lse_TH [T, nh].
void attention_varlen_forward(const VarlenAttention& a, const float* q, const float* k, const float* v, float* out,
                              float* lse);

// Gradients of q, k, v (overwritten) from the forward's inputs, out, lse and d(out).
void attention_varlen_backward(const VarlenAttention& a, const float* q, const float* k, const float* v,
                               const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv);

}  // namespace moe::kernels::cpu
