// Optimizers over fp32 parameters (AdamW with decoupled weight decay, as torch.optim.AdamW and
// Megatron; SGD with momentum, as torch.optim.SGD) and gradient clipping by the global L2 norm.
// Used by the trainer. State is one contiguous fp32 buffer per state key over all parameters (laid
// out in the order the optimizer is bound to: the trainer binds TrainModel's flat order, so state
// offsets equal the flat parameters' and gradients'), with a view per parameter name for
// checkpoints to save and restore.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <unordered_map>
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

// `params` sorted by address of their data: TrainModel's flat order when they are views of its
// flat buffer (what Optimizer::bind takes, so the state's offsets equal the parameters').
std::vector<ParamRef> in_address_order(std::span<const ParamRef> params);

struct OptimizerConfig {
  std::string type = "adam";  // adam (AdamW) | sgd
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.1f, sgd_momentum = 0.0f;
};

// A view of one parameter's state, for checkpoint I/O: Megatron / torch key `key` ("exp_avg",
// "exp_avg_sq" or "momentum_buffer") of parameter `param`, numel floats inside the key's flat
// buffer. Valid until reset() or destruction of the optimizer.
struct StateRef {
  std::string param, key;
  std::span<float> data;
};

class Optimizer {
 public:
  // InputError naming the flag for an unknown --optimizer or betas/eps/decay out of range.
  explicit Optimizer(OptimizerConfig cfg);
  const OptimizerConfig& config() const { return cfg_; }

  // Fixes the state layout: parameter i's state occupies [offset_i, offset_i + numel_i) of each
  // key's flat buffer, offsets in `params` order (names unique). Only names and sizes are kept.
  // Binding again to the same names and sizes in the same order is a no-op; to anything else it
  // is an InternalError (reset() first). The buffers themselves are allocated (zeroed) on first
  // need: the first step(), state_refs() or mutable state() - so a run that never steps or
  // restores holds and saves no state, as before the flat layout.
  void bind(std::span<const ParamRef> params);
  bool bound() const { return !layout_.empty(); }
  // Whether the flat state buffers exist (see bind()); false for an optimizer without state keys.
  bool has_state() const { return allocated_ && !keys_.empty(); }

  // One update of every parameter at learning rate lr (double, as Megatron's scheduler hands
  // it to torch), unless it would make a weight or a state value non-finite: then nothing
  // changes and false is returned (the caller counts a skipped iteration). `grad_norm` bounds
  // the gradients' magnitudes (the clipped global L2 norm); with it, a bound on the update,
  // kept from the previous step's exact maxima, proves most steps safe at no cost, and only a
  // step the bound cannot clear is first computed without writing. An unbound optimizer binds
  // to `params` first; otherwise `params` may come in any order, each found by name, and a name
  // the layout lacks or whose size differs is an InternalError (a checkpoint/model mismatch).
  bool step(std::span<const ParamRef> params, double lr, double grad_norm = std::numeric_limits<double>::infinity());
  // step() in two halves, for ranks that must agree before any of them writes (the distributed
  // optimizer: each rank checks its shard, the group takes the AND, then all apply or none).
  bool step_stays_finite(std::span<const ParamRef> params, double lr, double grad_norm);
  void apply_step(std::span<const ParamRef> params, double lr);

  // Optimizer steps taken (torch's per-parameter "step"; Adam's bias correction uses it).
  int64_t steps() const { return steps_; }
  void set_steps(int64_t n) { steps_ = n; }

  // The state keys this optimizer keeps per parameter, in torch's state_dict order.
  const std::vector<std::string>& state_keys() const { return keys_; }
  // Binds to `params` when unbound (else checks them against the layout), allocates the state
  // and returns a view of every parameter's state, in params order then state_keys() order:
  // for loading a checkpoint before the first step.
  std::vector<StateRef> state_refs(std::span<const ParamRef> params);
  // Parameter `name`'s state `key` (numel floats): a view into the key's flat buffer, owned by
  // the optimizer and valid until reset() or destruction (binding never moves it). The mutable
  // one allocates the zeroed buffers if needed, so checkpoint loading writes the restored values
  // into it before the first step; an unbound optimizer, an unknown name or a key not in
  // state_keys() is an InternalError. The const one is empty while !has_state().
  std::span<float> state(const std::string& name, const std::string& key);
  std::span<const float> state(const std::string& name, const std::string& key) const;
  // The whole flat buffer of `key` (all parameters, in bind order); empty while !has_state().
  std::span<const float> flat_state(const std::string& key) const;
  // Forgets the layout, all state and the step count (a fresh optimizer with the same config);
  // every view handed out before is invalid.
  void reset();

 private:
  struct Slot {
    std::string name;
    size_t offset, numel;
  };
  OptimizerConfig cfg_;
  std::vector<std::string> keys_;
  int64_t steps_ = 0;
  std::vector<Slot> layout_;                       // bind order
  std::unordered_map<std::string, size_t> index_;  // name -> layout_ index
  size_t total_ = 0;                               // floats per key buffer
  bool allocated_ = false;
  std::vector<std::vector<float>> flat_;  // per key (state_keys() order): total_ floats
  std::vector<float*> slots_;             // per-parameter state pointers, reused: no allocation per step
  // Largest |weight| and |first state| after the last step (exact); negative: not known yet.
  double w_max_ = -1, s_max_ = -1;

  const Slot& slot_of(const std::string& name, size_t hint) const;
  size_t key_index(const std::string& key) const;  // keys_.size() when not kept
  void allocate();
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
// The parts: the sum of squares (fixed order, double), the factor clip_grad_norm applies for a
// norm (1: none; also for a non-finite norm), and the scaling. Ranks that hold parts of the
// gradients sum their squares over the job and apply the same factor.
double grad_sum_of_squares(std::span<const ParamRef> params);
float clip_factor(double norm, double max_norm);
void scale_grads(std::span<const ParamRef> params, float scale);
inline bool grad_norm_ok(double norm) { return std::isfinite(norm); }

}  // namespace moe::train
