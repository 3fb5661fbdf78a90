// Optimizers over fp32 parameters (AdamW with decoupled weight decay, as torch.optim.AdamW and
// Megatron; SGD with momentum, as torch.optim.SGD) and gradient clipping by the global L2 norm.
// Used by the trainer; state is kept per parameter name so checkpoints can save and restore it.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace moe::train {

// One parameter as the optimizer sees it. The caller owns `data` and `grad` (numel floats each)
// and keeps them alive and in place across steps; the optimizer owns its state.
struct ParamRef {
  std::string name;
  float* data;
  float* grad;
  size_t numel;
  bool decay;  // weight decay applies (not to norms and biases)
};

// False for norm weights and biases (names containing "norm", ending in ".bias"/"_bias"):
// Megatron exempts them from weight decay. With the shape's rank, 1-D tensors are exempt too.
bool decays(const std::string& canonical_name);
bool decays(const std::string& canonical_name, size_t ndim);

struct OptimizerConfig {
  std::string type = "adam";  // adam (AdamW) | sgd
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.1f, sgd_momentum = 0.0f;
};

// A view of one state buffer, for checkpoint I/O: Megatron / torch key `key` ("exp_avg",
// "exp_avg_sq" or "momentum_buffer") of parameter `param`. Valid until reset() or destruction.
struct StateRef {
  std::string param, key;
  std::vector<float>* data;
};

class Optimizer {
 public:
  // InputError naming the flag for an unknown --optimizer or betas/eps/decay out of range.
  explicit Optimizer(OptimizerConfig cfg);
  const OptimizerConfig& config() const { return cfg_; }

  // One update of every parameter at learning rate lr (double, as Megatron's scheduler hands
  // it to torch), unless it would make a weight or a state value non-finite: then nothing
  // changes and false is returned (the caller counts a skipped iteration). `grad_norm` bounds
  // the gradients' magnitudes (the clipped global L2 norm); with it, a bound on the update,
  // kept from the previous step's exact maxima, proves most steps safe at no cost, and only a
  // step the bound cannot clear is first computed without writing. State is created zeroed on
  // first sight of a name; a restored state whose size differs from the parameter's is an
  // InternalError (a checkpoint/model mismatch).
  bool step(std::span<const ParamRef> params, double lr, double grad_norm = std::numeric_limits<double>::infinity());

  // Optimizer steps taken (torch's per-parameter "step"; Adam's bias correction uses it).
  int64_t steps() const { return steps_; }
  void set_steps(int64_t n) { steps_ = n; }

  // The state keys this optimizer keeps per parameter, in torch's state_dict order.
  const std::vector<std::string>& state_keys() const { return keys_; }
  // Creates (zeroed) any missing state of `params` and returns a view of every buffer, in
  // params order then state_keys() order: for loading a checkpoint before the first step.
  std::vector<StateRef> state_refs(std::span<const ParamRef> params);
  // Per-parameter state by name: state()[param][key].
  std::map<std::string, std::map<std::string, std::vector<float>>>& state() { return state_; }
  const std::map<std::string, std::map<std::string, std::vector<float>>>& state() const { return state_; }
  // Forgets all state and the step count (a fresh optimizer with the same config).
  void reset();

 private:
  OptimizerConfig cfg_;
  std::vector<std::string> keys_;
  int64_t steps_ = 0;
  std::map<std::string, std::map<std::string, std::vector<float>>> state_;
  std::vector<float*> slots_;  // per-parameter state pointers, reused: no allocation per step
  // Largest |weight| and |first state| after the last step (exact); negative: not known yet.
  double w_max_ = -1, s_max_ = -1;

  void bind_state(std::span<const ParamRef> params);
  void measure_maxima(std::span<const ParamRef> params);
  // One pass over every element: when kWrite the update is applied; either way the largest new
  // |w| and |state| are returned in *w_max, *s_max (non-finite if any new value is).
  template <bool kWrite>
  void update(std::span<const ParamRef> params, double lr, double* w_max, double* s_max);
};

// The global L2 norm of all gradients before clipping, accumulated in double in a fixed order
// (bitwise the same for any thread count, so resumed runs repeat exactly). When max_norm > 0
// and max_norm / (norm + 1e-6) < 1 (Megatron's and torch's rule), every gradient is scaled by
// that factor. A non-finite norm (some gradient is NaN/Inf) is returned with the gradients
// untouched: the caller skips the step and counts it (see grad_norm_ok).
double clip_grad_norm(std::span<const ParamRef> params, double max_norm);
inline bool grad_norm_ok(double norm) { return std::isfinite(norm); }

}  // namespace moe::train
