// Self-attention, one forward for inference and training: fused QKV in Megatron's per-group
// layout, optional q/k RMSNorm per head, RoPE at each token's position, causal attention that
// never crosses the packed sequences' boundaries (over the KV cache when the batch carries one),
// output projection. The forward leaves in `acts` exactly what the backward needs: training keeps
// them per layer until the backward, inference hands every layer one scratch object whose buffers
// are reused from layer to layer and step to step. Weight gradients accumulate.
#pragma once
#include <cstdint>
#include <vector>

#include "model/batch.h"
#include "model/context.h"
#include "model/layer_weights.h"
#include "model/rope.h"

namespace moe::model {

struct AttentionSaved {
  std::vector<float> qkv;      // [T, qkv_rows] projection output (+ bias), before q/k norm
  std::vector<float> q, k, v;  // [T, nh, d], [T, ng, d], [T, ng, d] as attention saw them
  std::vector<float> out;      // [T, nh, d] attention output (input of linear_proj)
  std::vector<float> lse;      // [T, nh]
};

// x_TD: normalised input; y_TD overwritten. `rope` must cover every position. `layer` indexes
// the batch's KV cache.
void attention_forward(const Context& ctx, const ModelConfig& c, const AttentionWeights& w, int layer,
                       const float* x_TD, const Batch& b, const RopeTable& rope, AttentionSaved& acts, float* y_TD);

// dx_TD overwritten with d(input); gradients of w's tensors accumulated into `g` (same layout).
void attention_backward(const Context& ctx, const ModelConfig& c, const AttentionWeights& w, AttentionWeights& g,
                        const float* x_TD, const Batch& b, const RopeTable& rope, const AttentionSaved& saved,
                        const float* dy_TD, float* dx_TD);

}  // namespace moe::model
