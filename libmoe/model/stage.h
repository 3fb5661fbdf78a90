// A Stage: a contiguous range of decoder layers, with the embedding when it is the first and the
// final norm and LM head when it is the last (DESIGN.md section 3). It is the one model the
// generator (inference) and the trainer drive, and the unit a pipeline schedule will call:
// forward(micro-batch) keeps in that micro-batch's StageActs what backward(micro-batch) needs,
// so forwards and backwards of different micro-batches may interleave. Every layer goes through
// the same module forwards whichever the caller; inference keeps nothing and reuses its buffers.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "model/attention.h"
#include "model/batch.h"
#include "model/context.h"
#include "model/layer_weights.h"
#include "model/mlp.h"
#include "model/moe_layer.h"
#include "model/rope.h"
#include "model/train_options.h"

namespace moe::model {

// The tensors a stage reads (or, for gradients, accumulates into), as views.
struct StageWeights {
  std::vector<LayerWeights> layers;      // this stage's layers, in order
  Tensor embedding, final_norm, output;  // output may be the embedding (tied)
};

// One layer's activations from its forward to its backward.
struct LayerActs {
  std::vector<float> x_in, h1, x_mid, h2;  // h1, h2 empty when the norms are recomputed
  AttentionSaved attn;
  MoeSaved moe;
  SwigluSaved mlp;
  bool mlp_kept = false;  // false: the MLP/MoE branch reruns in the backward (selective mlp/moe)
  bool complete = false;  // false: only x_in is kept (full recompute)
};

// One micro-batch's activations. Buffers are reused when the same StageActs serves again.
struct StageActs {
  std::vector<LayerActs> layers;
  LayerActs scratch;                   // inference: every layer's buffers, reused
  std::vector<float> x, x_next, h, y;  // the residual stream and a layer's branch buffers
  std::vector<float> hf, dhf;          // final norm output and its gradient from the head
};

class Stage {
 public:
  // `grads` null: a stage for inference (no backward). Options only matter for training.
  Stage(Context ctx, const ModelConfig& c, StageWeights weights, StageWeights* grads, TrainOptions options);
  const Context& context() const { return ctx_; }
  const ModelConfig& config() const { return cfg_; }
  StageWeights& weights() { return w_; }

  // Inference: the batch's tokens through every layer, appended to b.cache; the logits of the
  // last token ([V]) or of every token ([T, V]) written to `logits`.
  void forward_logits(const Batch& b, StageActs& acts, float* logits, bool all_logits);

  // Training (keep = true) or evaluation: the forward with the loss over labelled tokens; when
  // keeping, the head's gradient (loss_scale per token) is computed too and acts hold what
  // backward() needs. `logits_out` (optional, [labelled tokens, V]) receives the head's logits.
  StepStats forward_loss(const Batch& b, StageActs& acts, bool keep, float loss_scale, float* logits_out = nullptr);
  // Gradients of this micro-batch accumulated into the grads views; acts are consumed.
  void backward(const Batch& b, StageActs& acts, float aux_scale);

 private:
  void run_layers(const Batch& b, StageActs& acts, bool keep, bool inference, StepStats* st);
  void layer_forward(int i, const Batch& b, const float* x_in, float* x_out, LayerActs& a, bool keep, StageActs& buf);
  void layer_backward(int i, const Batch& b, LayerActs& a, float* dx, float aux_scale);
  void check_batch(const Batch& b) const;

  Context ctx_;
  ModelConfig cfg_;
  StageWeights w_;
  StageWeights* g_;
  TrainOptions opt_;
  RopeTable rope_;
  std::vector<std::pair<int, int>> chunks_;  // [begin, end) layer chunks (full recompute)
  std::vector<bool> chunk_recomputed_;
};

}  // namespace moe::model
