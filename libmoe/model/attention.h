// Self-attention block (forward, inference): fused QKV projection in Megatron's per-group
// layout, optional q/k RMSNorm per head (Qwen3), RoPE, causal GQA attention over the KV
// cache, output projection.
#pragma once
#include "model/kv_cache.h"
#include "model/layer_weights.h"
#include "model/rope.h"

namespace moe::model {

// x_TD: normalised input of T tokens at positions cache.length() ...; writes y_TD (overwrites).
// Appends this layer's keys/values at those positions (the caller advances the cache).
void attention_forward(const ModelConfig& c, const AttentionWeights& w, int layer, const float* x_TD, int64_t T,
                       KvCache& cache, const RopeTable& rope, float* y_TD);

}  // namespace moe::model
