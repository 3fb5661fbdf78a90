// The transformer for training on the CPU (fp32): owns fp32 parameters and their gradients
// under canonical names, runs forward and backward of one micro-batch of packed sequences
// (tokens of all sequences concatenated, cu_seqlens marking the boundaries), and accumulates
// gradients. Activations are kept per module as each backward needs them; recompute options
// trade them for a second forward. Used by the trainer (libmoe/train); no optimizer here.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "model/layer_weights.h"
#include "model/rope.h"
#include "model/router_train.h"

namespace moe::model {

struct RecomputeOptions {
  // none | selective | full (Megatron's --recompute_granularity; swift's default selective)
  std::string granularity = "selective";
  std::string method = "uniform";  // full: uniform (chunks of num_layers) | block (first num_layers)
  int num_layers = 1;
  // selective: core_attn (always: attention keeps only its output and log-sum-exp), moe_act,
  // layernorm, mlp, moe.
  std::vector<std::string> modules = {"core_attn"};
};

struct TrainOptions {
  MoeTrainOptions moe;
  RecomputeOptions recompute;
};

// Checks option values; InputError naming the flag.
void validate_train_options(const TrainOptions& o, const ModelConfig& c);

struct MicroBatchView {
  std::span<const int32_t> tokens;        // [T]
  std::span<const int32_t> labels;        // [T], target of each position or -100
  std::span<const int32_t> position_ids;  // [T]
  std::span<const int32_t> cu_seqlens;    // [S + 1]: 0 .. T
};

struct StepStats {
  double lm_loss_sum = 0;  // sum of per-token cross-entropy over labelled tokens
  int64_t loss_tokens = 0, correct = 0;
  double aux_loss = 0, z_loss = 0;         // summed over MoE layers, coefficients applied
  std::vector<int64_t> tokens_per_expert;  // [layers x experts], 0 for dense layers
  void add(const StepStats& o);
};

class TrainModel {
 public:
  // Copies `params` (any dtype) into owned fp32 tensors; InputError if a tensor the config
  // needs is missing or misshapen.
  TrainModel(ModelConfig config, const StateDict& params, TrainOptions options);

  const ModelConfig& config() const { return cfg_; }
  const TrainOptions& options() const { return opt_; }
  StateDict& params() { return params_; }
  const StateDict& params() const { return params_; }
  StateDict& grads() { return grads_; }
  // Tensors the model uses but the optimizer does not train, by canonical name: the MoE
  // layers' aux-loss-free expert bias ([E] fp32) when the config has it. Saved with checkpoints.
  const StateDict& buffers() const { return buffers_; }

  // Forward and backward of one micro-batch; gradients accumulate into grads(). The objective's
  // gradient is loss_scale * d(sum of token losses) + aux_scale * d(auxiliary losses).
  StepStats forward_backward(const MicroBatchView& mb, float loss_scale, float aux_scale);
  // Forward only (evaluation).
  StepStats evaluate(const MicroBatchView& mb);
  void zero_grad();
  // After the optimizer step: moves the expert biases by the step's token counts.
  void update_expert_bias(const std::vector<int64_t>& tokens_per_expert);

 private:
  struct LayerActs;
  StepStats run(const MicroBatchView& mb, bool backward, float loss_scale, float aux_scale);
  void layer_forward(int i, const MicroBatchView& mb, const float* x_in, float* x_out, LayerActs& a, bool keep);
  void layer_backward(int i, const MicroBatchView& mb, LayerActs& a, float* dx, float aux_scale);
  float* expert_bias(int layer);  // null without one

  ModelConfig cfg_;
  TrainOptions opt_;
  RopeTable rope_;
  StateDict params_, grads_;
  std::vector<LayerWeights> w_, g_;
  StateDict buffers_;
  Tensor embedding_, final_norm_, output_, d_embedding_, d_final_norm_, d_output_;
  std::vector<std::pair<int, int>> chunks_;  // [begin, end) layer chunks
  std::vector<bool> chunk_recomputed_;
};

}  // namespace moe::model
