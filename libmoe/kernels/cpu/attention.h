// Causal scaled-dot-product attention with grouped query heads over a key/value cache (CPU,
// fp32). Query token t sits at position pos0 + t and sees keys 0 .. pos0 + t.
#pragma once
#include <cstdint>

namespace moe::kernels::cpu {

struct AttentionShape {
  int64_t T;     // query tokens
  int64_t pos0;  // position of the first query token; keys 0 .. pos0+T-1 are in the cache
  int64_t nh;    // query heads
  int64_t ng;    // key/value heads (query head h uses group h / (nh / ng))
  int64_t d;     // head dim
  float scale;   // usually 1/sqrt(d)
};

// q_THd: [T, nh, d]; k_SGd, v_SGd: cache rows [S, ng, d] with S >= pos0 + T; out_THd: [T, nh, d].
void causal_attention(const AttentionShape& s, const float* q_THd, const float* k_SGd, const float* v_SGd,
                      float* out_THd);

// The few-query-token path's (token, head) items [b, e) with AVX2/FMA (attention_avx2.cpp);
// `score` holds pos0 + T floats. Called by causal_attention when the CPU has AVX2.
void attend_decode_avx2(const AttentionShape& s, const float* q_THd, const float* k_SGd, const float* v_SGd,
                        float* out_THd, int64_t b, int64_t e, float* score);

}  // namespace moe::kernels::cpu
