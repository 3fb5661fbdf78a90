// A Stage: a contiguous range of decoder layers, with the embedding when it is the first and the
// final norm and LM head when it is the last (DESIGN.md section 3). It is the one model the
// generator (inference) and the trainer drive, and the unit a pipeline schedule will call:
// forward(micro-batch) keeps in that micro-batch's StageActs what backward(micro-batch) needs,
// so forwards and backwards of different micro-batches may interleave. Every layer goes through
// the same module forwards whichever the caller; inference keeps nothing.
//
// Memory: a micro-batch's kept activations are carved from its StageActs' arena and every call's
// temporaries from the context's workspace arena, both sized before the call by
// stage_workspace (workspace.h), the function the planner reads too.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "core/arena.h"
#include "model/attention.h"
#include "model/batch.h"
#include "model/context.h"
#include "model/layer_weights.h"
#include "model/mlp.h"
#include "model/moe_layer.h"
#include "model/rope.h"
#include "model/train_options.h"
#include "model/workspace.h"

namespace moe::model {

// The tensors a stage reads (or, for gradients, accumulates into), as views.
struct StageWeights {
  std::vector<LayerWeights> layers;      // this stage's layers, in order
  Tensor embedding, final_norm, output;  // output may be the embedding (tied)
};

// One layer's activations from its forward to its backward (views of an arena).
struct LayerActs {
  std::span<float> x_in, h1, x_mid, h2;  // h1, h2 empty when the norms are recomputed
  AttentionSaved attn;
  MoeSaved moe;
  SwigluSaved mlp;
  bool mlp_kept = false;  // false: the MLP/MoE branch reruns in the backward (selective mlp/moe)
  bool complete = false;  // false: only x_in is kept (full recompute)
};

// One micro-batch's activations: views of its own arena, reused when the StageActs serves again.
struct StageActs {
  Arena arena;
  std::vector<LayerActs> layers;
  LayerActs scratch;                    // inference: the layer being run
  std::span<float> x, x_next, hf, dhf;  // the residual stream, final norm output and its gradient
  DeviceArray index;                    // a device backend: the batch's index arrays (BatchIndex)
};

class Stage {
 public:
  // `grads` null: a stage for inference (no backward). Options only matter for training.
  Stage(Context ctx, const ModelConfig& c, StageWeights weights, StageWeights* grads, TrainOptions options);
  const Context& context() const { return ctx_; }
  const ModelConfig& config() const { return cfg_; }
  StageWeights& weights() { return w_; }
  // The bytes a call on T tokens carves (what the arenas are sized to); Tw: under context
  // parallelism the whole micro-batch's tokens (stage_workspace).
  const StageWorkspace& workspace(int64_t T, StageCall call, int64_t Tw = 0);

  // Inference: the batch's tokens through every layer, appended to b.cache; the logits of the
  // last token ([V]) or of every token ([T, V]) written to `logits`.
  void forward_logits(const Batch& b, StageActs& acts, float* logits, bool all_logits);

  // Training (keep = true) or evaluation: the forward with the loss over labelled tokens; when
  // keeping, the head's gradient (loss_scale per token) is computed too and acts hold what
  // backward() needs. `logits_out` (optional, [labelled tokens, V]) receives the head's logits.
  // A pipeline stage without the embedding (StageWeights.embedding undefined) starts from `input`
  // ([T, D], the previous stage's output); one without the head (final_norm undefined) computes no
  // loss and leaves its output in acts.x ([T, D]) until `acts` serve another call.
  StepStats forward_loss(const Batch& b, StageActs& acts, bool keep, float loss_scale, float* logits_out = nullptr,
                         const float* input = nullptr);
  // Gradients of this micro-batch accumulated into the grads views; acts are consumed. Without the
  // head the backward starts from `grad_output` ([T, D], the next stage's input gradient); without
  // the embedding it ends by writing the gradient of its input to `grad_input` ([T, D]).
  void backward(const Batch& b, StageActs& acts, float aux_scale, const float* grad_output = nullptr,
                float* grad_input = nullptr);
  // The parts of a stage, as its hooks name them: each layer (its index in the stage), the
  // embedding (kEmbedding), the final norm and head (kHead).
  static constexpr int kHead = 1 << 30, kEmbedding = -1;
  // Told by backward() as parts have their gradients for this micro-batch complete: the final
  // norm (the head's own gradient is made by the forward), the layers last to first, the
  // embedding. Null: nobody listens. The overlapped gradient reduction listens during a step's
  // last backward (train_model.h).
  void set_grads_done(const std::function<void(int)>* done) { grads_done_ = done; }
  // Told by every forward before it reads a part's weights: the embedding, the layers first to
  // last, the head. Null: nobody listens. The overlapped parameter gather waits there.
  void set_params_needed(const std::function<void(int)>* needed) { params_needed_ = needed; }
  bool first() const { return first_; }
  // The residual stream's rows of a micro-batch of T tokens on this rank (seq_rows).
  int64_t residual_rows(int64_t T) const { return seq_rows(ctx_, T); }
  bool last() const { return last_; }

 private:
  void begin(StageActs& acts, const Batch& b, StageCall call);
  // On a backend whose memory is not the host's, b's index arrays copied into acts.index.
  BatchIndex device_index(const Batch& b, StageActs& acts) const;
  void run_layers(const Batch& b, StageActs& acts, bool keep, bool inference, StepStats* st, const float* input);
  void layer_forward(int i, const Batch& b, const float* x_in, float* x_out, LayerActs& a, bool keep, Arena& saved);
  void layer_backward(int i, const Batch& b, LayerActs& a, float* dx, float aux_scale);
  // A TP branch's output (or input gradient) `full` over T rows made this rank's: `partial` sums
  // all-reduced in place (returns `full`), or under sequence parallelism reduce-scattered (a
  // whole one: its rows taken) into `local` (returned).
  float* reduce_branch(float* full, int64_t T, bool partial, float* local);
  void check_batch(const Batch& b) const;

  Context ctx_;
  ModelConfig cfg_;
  StageWeights w_;
  StageWeights* g_;
  TrainOptions opt_;
  bool first_ = true, last_ = true;  // holds the embedding / the final norm and head
  RopeTable rope_;
  StageShape shape_;
  std::vector<std::pair<int, int>> chunks_;  // [begin, end) layer chunks (full recompute)
  std::vector<bool> chunk_recomputed_;
  const std::function<void(int)>*grads_done_ = nullptr, *params_needed_ = nullptr;
  void grads_done(int part) const {
    if (grads_done_) (*grads_done_)(part);
  }
  void params_needed(int part) const {
    if (params_needed_) (*params_needed_)(part);
  }
  // The last sizes computed, by call kind (a decode loop asks for the same T every step).
  struct Sized {
    int64_t T = -1, Tw = -1;
    StageWorkspace w;
  };
  Sized sized_[3];
};

}  // namespace moe::model
