// Optimizers over fp32 parameters (AdamW with decoupled weight decay, as torch.optim.AdamW and
// Megatron; SGD with momentum) and gradient clipping by the global L2 norm. State is kept per
// parameter name so checkpoints can save and restore it.
#pragma once
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace moe::train {

struct ParamRef {
  std::string name;
  float* data;
  float* grad;
  size_t numel;
  bool decay;  // weight decay applies (not to norms and biases)
};

// False for norm weights and biases: Megatron exempts them from weight decay.
bool decays(const std::string& canonical_name);

struct OptimizerConfig {
  std::string type = "adam";  // adam (AdamW) | sgd
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.1f, sgd_momentum = 0.0f;
};

class Optimizer {
 public:
  explicit Optimizer(OptimizerConfig cfg);
  const OptimizerConfig& config() const { return cfg_; }
  // One update of every parameter at learning rate lr.
  void step(std::span<const ParamRef> params, float lr);
  int64_t steps() const { return steps_; }
  // Per-parameter state: "exp_avg"/"exp_avg_sq" (adam) or "momentum_buffer" (sgd), by name.
  std::map<std::string, std::map<std::string, std::vector<float>>>& state() { return state_; }
  void set_steps(int64_t n) { steps_ = n; }

 private:
  OptimizerConfig cfg_;
  int64_t steps_ = 0;
  std::map<std::string, std::map<std::string, std::vector<float>>> state_;
};

// The global L2 norm of all gradients (before clipping); when max_norm > 0 and the norm
// exceeds it, every gradient is scaled by max_norm / norm. A non-finite norm is returned as
// is, gradients untouched (the caller skips the step).
double clip_grad_norm(std::span<const ParamRef> params, double max_norm);

}  // namespace moe::train
