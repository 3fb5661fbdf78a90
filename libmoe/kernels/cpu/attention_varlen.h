// Causal grouped-query attention over packed variable-length sequences (CPU, fp32), forward
// and backward, for training. Tokens of all sequences are concatenated; cu_seqlens marks where
// each starts, and no token attends across a boundary (Megatron-SWIFT's padding-free THD
// layout). The forward keeps only the output and each row's log-sum-exp; the backward
// recomputes the probabilities from them, as flash attention does. Under context parallelism the
// queries are a rank's part of each sequence and the keys the whole sequence (model/
// context_parallel.h): the causal mask then follows each query's position in its sequence.
#pragma once
#include <cstdint>

namespace moe::kernels::cpu {

struct VarlenAttention {
  int64_t nh, ng, d;          // query heads, key/value groups, head dim
  float scale;                // usually 1/sqrt(d)
  const int32_t* cu_seqlens;  // [S + 1], 0 .. T: each sequence's query rows
  int64_t num_seqs;           // S
  // Queries that are some of each sequence's tokens, keys all of them: cu_seqlens_k [S + 1] marks
  // each sequence's key rows, q_pos [T] each query's position in its sequence (increasing within
  // a sequence); a query at position p sees keys 0 .. p. Null: the keys are the query rows
  // themselves and a query's position is its row in the sequence.
  const int32_t* cu_seqlens_k = nullptr;
  const int32_t* q_pos = nullptr;
};

// q_THd [T, nh, d]; k_TGd, v_TGd [Tk, ng, d] (Tk = cu_seqlens_k[S], else T); out_THd [T, nh, d];
// lse_TH [T, nh].
void attention_varlen_forward(const VarlenAttention& a, const float* q, const float* k, const float* v, float* out,
                              float* lse);

// Gradients of q [T, nh, d], k, v [Tk, ng, d] (overwritten) from the forward's inputs, out, lse and d(out).
void attention_varlen_backward(const VarlenAttention& a, const float* q, const float* k, const float* v,
                               const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv);

}  // namespace moe::kernels::cpu
