// Activation memory of moectl's own CPU training engine (libmoe/model/train_model.cpp and the
// *_train.cpp modules it calls), for the memory model's Engine::kMoectlCpu. Each term names
// the std::vector it counts, so a change in what the engine keeps is a change here; the
// measured check is tests/plan/cpu_memory_check.cpp (peak RSS of real training runs).
#pragma once
#include "plan/layout.h"
#include "plan/model_shape.h"

namespace moe::plan {

struct LayerActivations;

// What one layer keeps for its backward (fp32, one process) for `T` tokens. Recompute maps to
// moectl's flags: none; selective = --recompute_modules core_attn layernorm moe_act (the set
// the GPU model calls selective); full = --recompute_granularity full, uniform chunks of one layer.
LayerActivations moectl_cpu_layer_activations(const ModelShape& m, double T, bool moe_layer, Recompute r);

// Bytes alive at the step's peak besides the layers' kept activations: the backward of the last
// layer (its temporaries, the residual/norm buffers of the step, the LM head's chunk, a fully
// recomputed layer rebuilt whole) and the attention workspaces every worker thread keeps.
struct MoectlCpuWorking {
  double step_buffers = 0;         // residual stream x/x_next, final norm out/grad, label rows
  double head_chunk = 0;           // LM head: [256, V] logits + the chunk's hidden states and their grads
  double backward = 0;             // temporaries of the largest layer backward
  double recompute = 0;            // full recompute: the rebuilt layer beyond its kept input
  double attention_workspace = 0;  // thread_local [L, L] probabilities (forward P, backward P and dP)
};
MoectlCpuWorking moectl_cpu_working(const ModelShape& m, const Layout& l, const TrainingOptions& t);

}  // namespace moe::plan
