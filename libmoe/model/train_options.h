// What training adds to the engine's forward: recompute settings (Megatron's flags), the MoE
// training options, and the statistics one micro-batch's forward returns. Validated once, with
// errors naming the flag.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/model_config.h"
#include "model/router_train.h"

namespace moe::model {

// Megatron's --recompute_granularity; one enum for the trainer and the planner.
enum class Recompute { kNone, kSelective, kFull };
const char* to_string(Recompute r);
// "none" | "selective" | "full"; false for anything else.
bool parse_recompute(const std::string& s, Recompute* out);

struct RecomputeOptions {
  Recompute granularity = Recompute::kSelective;  // swift's default
  std::string method = "uniform";                 // full: uniform (chunks of num_layers) | block (first num_layers)
  int num_layers = 1;
  // selective: core_attn (always: attention keeps only its output and log-sum-exp), moe_act,
  // layernorm, mlp, moe.
  std::vector<std::string> modules = {"core_attn"};
};

struct TrainOptions {
  MoeTrainOptions moe;
  RecomputeOptions recompute;
  bool sequence_parallel = false;  // Megatron's --sequence_parallel (with tensor parallelism)
};

// Checks option values; InputError naming the flag.
void validate_train_options(const TrainOptions& o, const ModelConfig& c);

struct StepStats {
  double lm_loss_sum = 0;  // sum of per-token cross-entropy over labelled tokens
  int64_t loss_tokens = 0, correct = 0;
  double aux_loss = 0, z_loss = 0;         // summed over MoE layers, coefficients applied
  std::vector<int64_t> tokens_per_expert;  // [layers x experts], 0 for dense layers
  void add(const StepStats& o);
};

}  // namespace moe::model
