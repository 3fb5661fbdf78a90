// The model for training on the CPU (fp32): owns this rank's parameters and their gradients, each
// in one flat buffer (a view per rank-local canonical name), and the buffers (expert bias);
// drives one Stage (stage.h) over all layers: forward and backward of one micro-batch of packed
// sequences, gradients accumulated. Used by the trainer (libmoe/train); no optimizer here.
//
// The flat buffers hold the dense parameters first (WeightMap order), then the experts (by layer,
// local expert, fc1 then fc2): the two regions are reduced over different groups (dense over DP,
// experts over expert-DP). Under expert parallelism a rank holds only its EP rank's experts, under
// EP-local names (weight0 .. weight{E/EP - 1}), as Megatron's per-rank checkpoints name them;
// under tensor parallelism it holds its TP rank's slices (ShardSpec), with the padded vocabulary's
// rows of that rank. Under pipeline parallelism it holds its stage's layers (global layer names),
// the embedding on the first stage and the final norm and head on the last; with tied embeddings
// the last stage keeps its own copy of the embedding as output_layer.weight (as Megatron does),
// kept equal by summing the two gradients (train/parallel_optimizer.h).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/stage.h"
#include "model/state_dict.h"
#include "model/train_options.h"

namespace moe::model {

// Megatron's --make_vocab_size_divisible_by default, which moectl's training always uses (args.json
// records it): under TP the padded vocabulary is a multiple of it times TP.
inline constexpr int kMakeVocabSizeDivisibleBy = 128;

struct MicroBatchView {
  std::span<const int32_t> tokens;        // [T]
  std::span<const int32_t> labels;        // [T], target of each position or -100
  std::span<const int32_t> position_ids;  // [T]
  std::span<const int32_t> cu_seqlens;    // [S + 1]: 0 .. T
  // Context parallelism: the whole micro-batch's cu_seqlens when the view is this CP rank's rows
  // of it (model/context_parallel.h); empty otherwise.
  std::span<const int32_t> whole_cu_seqlens;
};

class TrainModel {
 public:
  // Copies `params` (any dtype) into the owned fp32 flat buffer; InputError if a tensor the
  // config needs is missing or misshapen.
  // `params` holds the whole model (global names); this rank keeps its slice by ShardSpec. With
  // `groups` null: one process.
  TrainModel(ModelConfig config, const StateDict& params, TrainOptions options,
             const std::shared_ptr<const dist::ProcessGroups>& groups = nullptr);

  const ModelConfig& config() const { return cfg_; }
  const TrainOptions& options() const { return opt_; }
  // Views into the flat buffers, by canonical name; they keep the buffers alive.
  StateDict& params() { return params_; }
  const StateDict& params() const { return params_; }
  StateDict& grads() { return grads_; }
  std::span<float> flat_params() { return {param_flat_.get(), numel_}; }
  std::span<float> flat_grads() { return {grad_flat_.get(), numel_}; }
  // Where the experts start in the flat buffers ([0, expert_offset) are the dense parameters).
  size_t expert_offset() const { return dense_numel_; }
  // This rank's experts: [first, first + count) of the config's; names are local (0 .. count-1).
  int64_t first_expert() const { return first_expert_; }
  int64_t local_experts() const { return local_experts_; }
  // Tensors the model uses but the optimizer does not train, by canonical name: the MoE
  // layers' aux-loss-free expert bias ([E] fp32) when the config has it. Saved with checkpoints.
  const StateDict& buffers() const { return buffers_; }

  // Forward and backward of one micro-batch; gradients accumulate into grads(). The objective's
  // gradient is loss_scale * d(sum of token losses) + aux_scale * d(auxiliary losses).
  StepStats forward_backward(const MicroBatchView& mb, float loss_scale, float aux_scale);
  // Forward only (evaluation). `logits_out` (optional, [labelled tokens, V]) gets the head's
  // logits: the training forward's, for comparing with inference.
  StepStats evaluate(const MicroBatchView& mb, float* logits_out = nullptr);
  void zero_grad();

  // Pipeline parallelism: this rank's stage (model chunk `chunk` of chunks(), with virtual
  // stages), one micro-batch at a time, several in flight (each in its own activation slot).
  // Statistics come under global layer indices (the chunk's layers filled). Without the embedding
  // `input` is the previous stage's output; without the head the output is stage_output(slot,
  // chunk) until the slot serves again. The backward takes the next stage's input gradient
  // (`grad_output`, without the head) and writes its own input's gradient to `grad_input`
  // (without the embedding).
  int chunks() const { return int(chunks_.size()); }
  // The rows of a micro-batch of T tokens a stage hands the next (this TP rank's under SP).
  int64_t activation_rows(int64_t T) const { return chunks_.front()->stage->residual_rows(T); }
  bool first_stage() const { return chunks_.front()->stage->first(); }  // holds the embedding
  bool last_stage() const { return chunks_.back()->stage->last(); }     // holds the head
  // The first chunk's layers (without virtual stages: the stage's).
  int layer_begin() const { return layer_begin_; }
  int layer_end() const { return layer_end_; }
  StepStats forward_stage(const MicroBatchView& mb, int slot, bool keep, float loss_scale, const float* input,
                          int chunk = 0);
  const float* stage_output(int slot, int chunk = 0) const { return slot_acts(slot, chunk).x.data(); }
  void backward_stage(const MicroBatchView& mb, int slot, float aux_scale, const float* grad_output, float* grad_input,
                      int chunk = 0);
  // The stage (the first model chunk's) and the micro-batch activations it carves (their arenas'
  // sizes are its workspace).
  Stage& stage() { return *chunks_.front()->stage; }
  const StageActs& activations() const { return acts_; }
  // The step's overlapped gradient reduction (--overlap_grad_reduce): `done(part)` is called as
  // each part of the model has its gradients final for the step, that is during each model chunk's
  // `backwards`-th backward from now (its last of the step: the one micro-batch of forward_backward
  // counts too). `part` is a global layer index, kHeadPart (final norm) or kEmbeddingPart. An
  // empty `done` stops listening.
  static constexpr int kHeadPart = Stage::kHead, kEmbeddingPart = Stage::kEmbedding;
  void on_final_grads(std::function<void(int)> done, int backwards);
  // The overlapped parameter gather (--overlap_param_gather): `needed(part)` is called before every
  // forward reads a part's weights (parts as above). Empty: nobody listens.
  void on_params_needed(std::function<void(int)> needed);
  // After the optimizer step: moves the expert biases by the step's token counts.
  void update_expert_bias(const std::vector<int64_t>& tokens_per_expert);

 private:
  Batch batch(const MicroBatchView& mb) const {
    Batch b{mb.tokens, mb.position_ids, mb.cu_seqlens, mb.labels};
    b.cp_cu_seqlens = mb.whole_cu_seqlens;
    return b;
  }
  StepStats global_stats(StepStats st, int chunk) const;  // a chunk's statistics at global layer indices
  StageActs& slot_acts(int slot, int chunk);
  // Chunk `chunk`'s backward of one micro-batch, telling final_grads_ when it is the step's last.
  void run_backward(int chunk, const Batch& b, StageActs& acts, float aux_scale, const float* grad_output,
                    float* grad_input);
  const StageActs& slot_acts(int slot, int chunk) const { return *chunks_.at(size_t(chunk))->slots.at(size_t(slot)); }

  ModelConfig cfg_;
  TrainOptions opt_;
  size_t numel_ = 0, dense_numel_ = 0;
  int64_t first_expert_ = 0, local_experts_ = 0;
  std::shared_ptr<float[]> param_flat_, grad_flat_;
  StateDict params_, grads_, buffers_;
  // A contiguous range of layers run by one Stage (the whole model, a pipeline stage's, or one
  // virtual chunk's), its gradient views and the pipeline's micro-batches in flight.
  struct Chunk {
    int begin = 0, end = 0;
    StageWeights grads;
    std::unique_ptr<Stage> stage;
    std::vector<std::unique_ptr<StageActs>> slots;
    int backwards_left = 0;                  // until the step's last backward (on_final_grads)
    std::function<void(int)> grads_done;     // final_grads_ with the stage's layer indices made global
    std::function<void(int)> params_needed;  // params_needed_, likewise
  };
  std::function<void(int)> final_grads_, params_needed_;
  // A hook of the stage's parts (layer indices local to `begin`) calling `to` with global ones.
  std::function<void(int)> globalised(const std::function<void(int)>& to, int begin) const;
  std::vector<std::unique_ptr<Chunk>> chunks_;
  StageActs acts_;                       // one micro-batch in flight at a time; its buffers reused
  int layer_begin_ = 0, layer_end_ = 0;  // the first chunk's layers [begin, end)
};

}  // namespace moe::model
