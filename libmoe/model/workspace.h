// The bytes a Stage carves for one micro-batch of T tokens, known before the step: the Stage sizes
// its arenas with them and the planner (plan/moectl_cpu_memory) reads them, so neither mirrors
// the other. Computed by running the modules' own carve functions on measuring arenas in the
// order the Stage calls them; a Stage that carves more than this stops with an internal error.
//   saved:   the micro-batch's arena (StageActs): residual stream, final-norm output and its
//            gradient, and what every layer keeps from its forward to its backward.
//   scratch: the context's workspace: the temporaries of one forward or backward call (the
//            largest of a layer's forward, the LM head's chunk, a layer's backward with a
//            recomputed chunk rebuilt whole).
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "model/context.h"
#include "model/model_config.h"
#include "model/train_options.h"

namespace moe::model {

// What the sizes depend on: this rank's shapes of a stage's layers.
struct StageShape {
  int64_t hidden = 0, heads = 0, query_groups = 0, head_dim = 0, vocab = 0;
  bool qk_layernorm = false;
  int64_t ffn = 0;  // dense MLP width
  int64_t experts = 0, topk = 0, moe_ffn = 0, shared_ffn = 0;
  bool shared_gate = false;
  std::vector<bool> moe_layers;    // per layer of the stage: MoE (true) or dense MLP
  int tp = 1;                      // tensor-parallel ranks: widths and vocab rows above are this rank's
  bool sequence_parallel = false;  // with tp > 1: the residual stream's rows split over TP
  int cp = 1;                      // context-parallel ranks: attention gathers keys and values over them
  bool moe_own_rows = false;       // MoE parallel folding: each TP rank routes its own rows (moe_routes_own_rows)
  // The residual stream's rows on this rank, and the rows of a whole (gathered) activation, for a
  // micro-batch of T tokens (Context's seq_rows / full_rows).
  int64_t seq_rows(int64_t T) const { return sequence_parallel && tp > 1 ? (T + tp - 1) / tp : T; }
  int64_t full_rows(int64_t T) const { return sequence_parallel && tp > 1 ? seq_rows(T) * tp : T; }
};
// The shape of layers [begin, end) of `c` on the rank `ctx` describes.
StageShape stage_shape(const Context& ctx, const ModelConfig& c, int begin, int end);

enum class StageCall { kInference, kEvaluate, kTrain };

// Bytes one layer keeps for its backward, by what they hold (the planner's LayerActivations).
struct LayerBytes {
  size_t attn_norm_in = 0;    // x_in
  size_t attn_qkv_in = 0;     // h1 (dropped by the layernorm recompute module)
  size_t attn_qkv = 0;        // qkv projection and the q, k, v attention saw
  size_t attn_out = 0;        // attention output and log-sum-exp
  size_t mlp_norm_in = 0;     // x_mid
  size_t mlp_fc1_in = 0;      // h2 (dropped by layernorm)
  size_t mlp_fc1_out = 0;     // dense MLP or shared expert: fc1 output
  size_t mlp_act_out = 0;     // its activation (dropped by moe_act), shared output and gate
  size_t router = 0;          // router logits, probabilities, routings, dispatcher row map
  size_t expert_fc1_in = 0;   // permuted rows (worst case)
  size_t expert_fc1_out = 0;  // experts' fc1 outputs
  size_t expert_act_out = 0;  // experts' activations (dropped by moe_act)
  size_t combine = 0;         // experts' outputs
  size_t total() const;
};

struct StageWorkspace {
  size_t step = 0;                 // x, x_next, final-norm output (+ its gradient when training)
  std::vector<LayerBytes> layers;  // what each layer keeps at the end of the forward
  size_t saved = 0;                // the micro-batch arena's high-water mark
  size_t forward = 0;              // workspace high-water of the layers' forwards
  size_t head = 0;                 // of the LM head's chunk (training and evaluation)
  size_t backward = 0;             // of the backward (recomputed chunks included)
  size_t scratch = 0;              // the workspace's size: the largest of the three
  size_t total() const { return saved + scratch; }
};

// LM-head tokens per chunk: bounds the [chunk, V] logits buffer.
inline constexpr int64_t kHeadChunk = 256;

// [begin, end) layer chunks and whether each is recomputed whole in the backward (full recompute).
std::vector<std::pair<int, int>> layer_chunks(const RecomputeOptions& r, int layers, std::vector<bool>* recomputed);

// T: the micro-batch's tokens on this rank; Tw: under context parallelism the whole micro-batch's
// (its keys and values are gathered whole), else ignored.
StageWorkspace stage_workspace(const StageShape& s, const TrainOptions& o, int64_t T, StageCall call, int64_t Tw = 0);

}  // namespace moe::model
