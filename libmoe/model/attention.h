// Self-attention, one forward for inference and training: fused QKV in Megatron's per-group
// layout, optional q/k RMSNorm per head, RoPE at each token's position, causal attention that
// never crosses the packed sequences' boundaries (over the KV cache when the batch carries one),
// output projection. The forward carves from `keep` exactly what the backward needs: training
// keeps them per layer until the backward, inference carves them from the workspace and lets
// them go after the layer. The backward's temporaries come from the context's workspace arena.
// Weight gradients accumulate. Under tensor parallelism (ctx's TP group) the rank holds whole
// query groups: QKV is column-parallel, linear_proj row-parallel, and the output and the input's
// gradient are summed over TP here. Under context parallelism the batch holds this rank's rows of
// each sequence, and the keys and values are gathered whole over the CP group
// (model/context_parallel.h).
#pragma once
#include <cstdint>
#include <span>

#include "core/arena.h"
#include "model/batch.h"
#include "model/context.h"
#include "model/layer_weights.h"
#include "model/rope.h"

namespace moe::model {

struct AttentionSaved {
  std::span<float> qkv;      // [T, qkv_rows] projection output (+ bias), before q/k norm
  std::span<float> q, k, v;  // [T, nh, d], [T, ng, d], [T, ng, d] as attention saw them
  std::span<float> out;      // [T, nh, d] attention output (input of linear_proj)
  std::span<float> lse;      // [T, nh]
};

// What the forward keeps for T tokens of nh heads, ng groups of d channels (the sizes the
// workspace is planned from).
AttentionSaved carve_attention_saved(Arena& keep, int64_t T, int64_t nh, int64_t ng, int64_t d);
// The backward's workspace: d(out), dq, dk, dv, (the raw q and k with q/k norm), d(qkv).
// Under tensor parallelism (tp) with q/k norm also the norms' gradients of this rank's heads, summed
// over TP before they accumulate (the norm weights are shared by every rank's heads).
struct AttentionScratch {
  std::span<float> dout, dq, dk, dv, q_raw, k_raw, v_unused, dqkv, dnorms_2d;
};
AttentionScratch carve_attention_backward_scratch(Arena& ws, int64_t T, int64_t nh, int64_t ng, int64_t d,
                                                  bool qk_layernorm, bool tp = false);

// x_TD: normalised input; y_TD overwritten. `rope` must cover every position. `layer` indexes
// the batch's KV cache.
void attention_forward(const Context& ctx, const ModelConfig& c, const AttentionWeights& w, int layer,
                       const float* x_TD, const Batch& b, const RopeTable& rope, Arena& keep, AttentionSaved& acts,
                       float* y_TD);

// dx_TD overwritten with d(input); gradients of w's tensors accumulated into `g` (same layout).
void attention_backward(const Context& ctx, const ModelConfig& c, const AttentionWeights& w, AttentionWeights& g,
                        const float* x_TD, const Batch& b, const RopeTable& rope, const AttentionSaved& saved,
                        const float* dy_TD, float* dx_TD);

}  // namespace moe::model
