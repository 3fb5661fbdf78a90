// Activation memory of moectl's own CPU training engine, for the memory model's
// Engine::kMoectlCpu: read from the engine's own workspace sizes (model/workspace.h, the arenas a
// Stage carves every activation and temporary from, sized by the same function before each step),
// plus what the kernels hold outside those arenas. The measured check is
// tests/plan/cpu_memory_check.cpp (peak RSS of real training runs).
#pragma once
#include "model/train_options.h"
#include "model/workspace.h"
#include "plan/layout.h"
#include "plan/model_shape.h"

namespace moe::plan {

struct LayerActivations;

// The engine's view of the model (one process: every head, group and expert local) and of the
// flags. Recompute maps to moectl's flags: none; selective = --recompute_modules core_attn
// layernorm moe_act (the set the GPU model calls selective); full = --recompute_granularity
// full, uniform chunks of one layer.
model::StageShape moectl_cpu_stage_shape(const ModelShape& m);
model::TrainOptions moectl_cpu_train_options(Recompute r, const TrainingOptions& t);

// What one layer keeps for its backward (fp32, one process) for `T` tokens.
LayerActivations moectl_cpu_layer_activations(const ModelShape& m, const TrainingOptions& t, int64_t T, bool moe_layer,
                                              Recompute r);

// Bytes alive at the step's peak besides the layers' kept activations.
struct MoectlCpuWorking {
  double step_buffers = 0;  // the micro-batch arena beyond the layers: residual stream, final norm
                            // output and its gradient (+ a layer carved whole for a moment under full
                            // recompute)
  double head_chunk = 0;    // the LM head's chunk: its share of the workspace arena
  double workspace = 0;     // the rest of the workspace arena (a layer's backward, recomputed chunks)
  double kernels = 0;       // outside the arenas: each worker thread's attention [L, L] buffers and
                            // the expert and router backward temporaries of the kernels
};
MoectlCpuWorking moectl_cpu_working(const ModelShape& m, const Layout& l, const TrainingOptions& t);

// The kernels' buffers outside the arenas (kernels/cpu) for micro-batches of T tokens in sequences
// of L: each worker thread's attention [L, L] probabilities (forward P, backward P and dP) for the
// process's life, and the larger of the MoE backward's per-thread expert-block temporaries (dh,
// d[gate; up], + the recomputed activation under selective recompute) and the router's fp64
// probability gradient. `moe_ffn` is this rank's expert width; experts 0: a dense model.
double moectl_cpu_kernel_bytes(int64_t T, int64_t L, int threads, int64_t experts, int64_t topk, int64_t moe_ffn,
                               bool selective);

}  // namespace moe::plan
