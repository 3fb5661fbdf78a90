// Memory model: bytes per GPU of one layout, for the first and the last pipeline stage (the
// first holds the most in-flight micro-batches, the last the logits). Weights, gradients and
// optimizer follow Megatron's theoretical_memory_usage (bf16 params, fp32 main grads, fp32
// master + Adam moments sharded by the distributed optimizer over DP x CP for dense parameters
// and over expert-DP for experts); activations are counted per module as Megatron-Core keeps
// them with flash attention and no dropout (Korthikanti et al. 2022, extended to SwiGLU, GQA
// and MoE: router, permuted tokens x top-k, expert intermediates, combine, shared expert).
#pragma once
#include <string>
#include <vector>

#include "plan/layout.h"
#include "plan/model_shape.h"

namespace moe::plan {

// Activation bytes of one layer for one micro-batch on one GPU, by what is kept.
struct LayerActivations {
  double attn_norm_in = 0, attn_qkv_in = 0, attn_qkv = 0, attn_out = 0;
  double mlp_norm_in = 0, mlp_fc1_in = 0, mlp_fc1_out = 0, mlp_act_out = 0;  // dense MLP or shared expert
  double router = 0, expert_fc1_in = 0, expert_fc1_out = 0, expert_act_out = 0, combine = 0;
  double total() const {
    return attn_norm_in + attn_qkv_in + attn_qkv + attn_out + mlp_norm_in + mlp_fc1_in + mlp_fc1_out + mlp_act_out +
           router + expert_fc1_in + expert_fc1_out + expert_act_out + combine;
  }
};

// What one layer keeps under `r`: none keeps everything; selective recomputes the norms and
// the MLP/expert activation functions (Megatron --recompute_modules layernorm moe_act, plus
// core_attn, which keeps nothing extra with flash attention); full keeps only the layer input.
LayerActivations layer_activations(const ModelShape& m, const Layout& l, const TrainingOptions& t, bool moe_layer,
                                   Recompute r);

// Stated allowance outside the allocator's tensors.
inline constexpr double kCudaContextGiB = 0.75;   // CUDA context, cuBLAS/cuDNN workspaces
inline constexpr double kNcclPerGroupGiB = 0.25;  // NCCL buffers per process group of size > 1
inline constexpr double kFragmentation = 0.08;    // caching-allocator slack (expandable segments), share of activations
inline constexpr double kLogitBytes = 10;         // per logit: bf16 logits + fp32 softmax + fp32 grad

struct StageMemory {
  int stage = 0;
  // Parameters on this GPU.
  double dense_params = 0, expert_params = 0;
  // Bytes by component (the JSON's memory_gib keys).
  double weights = 0, gradients = 0, optimizer = 0, activations = 0, other = 0;
  // Detail of activations and other.
  double layer_microbatches = 0;  // layer activations held at the peak (layers x micro-batches)
  double act_layers = 0, act_working = 0, act_logits = 0, act_dispatcher = 0;
  double cuda_context = 0, nccl = 0, fragmentation = 0;
  double allocated() const { return weights + gradients + optimizer + activations; }  // what torch's allocator sees
  double total() const { return allocated() + other; }
};

struct MemoryEstimate {
  StageMemory first, last;
  const StageMemory& peak() const { return last.total() > first.total() ? last : first; }
};

// Preconditions: the layout is valid for the model (see layout_search.h: validate_layout).
MemoryEstimate estimate_memory(const ModelShape& m, const Layout& l, const TrainingOptions& t);

// Number of micro-batches per step: global_batch / (micro_batch x dp).
int64_t num_microbatches(const Layout& l, const TrainingOptions& t);

inline constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

}  // namespace moe::plan
