// Learning-rate schedule with Megatron-Core's OptimizerParamScheduler semantics, used by the
// trainer each iteration and saved with checkpoints: linear warmup from warmup_init to lr, then
// cosine, linear, inverse-square-root or constant decay to min_lr at lr_decay_iters, min_lr after.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

namespace moe::train {

struct LrScheduleConfig {
  double lr = 1e-5, min_lr = 0.0;
  double warmup_init = 0.0;      // --lr_warmup_init: the lr at step 0 of the warmup
  int64_t warmup_iters = 0;      // --lr_warmup_iters
  double warmup_fraction = 0;    // --lr_warmup_fraction (of decay iters), if > 0
  int64_t decay_iters = 0;       // --lr_decay_iters; 0 = train_iters
  std::string style = "cosine";  // --lr_decay_style: cosine | linear | constant | inverse-square-root
};

class LrSchedule {
 public:
  // InputError naming the flag for inconsistent settings: both warmup flags, a fraction outside
  // [0, 1), min_lr outside [0, lr], warmup_init above lr, warmup not shorter than the decay
  // (Megatron asserts warmup < decay), no decay iterations, an unknown style.
  LrSchedule(LrScheduleConfig cfg, int64_t train_iters);

  // The learning rate for the optimizer step that follows `step` completed steps. Megatron
  // steps its scheduler after each update, so iteration i (1-based) trains at lr_at(i - 1):
  // with warmup the first iteration's lr is warmup_init (0 by default).
  double lr_at(int64_t step) const;

  // Warmup length in iterations; fractional with --lr_warmup_fraction (Megatron multiplies the
  // fraction by the decay steps without rounding), so the rounded value is for display only.
  double warmup() const { return warmup_; }
  int64_t warmup_iters() const { return std::llround(warmup_); }  // warmup_ >= 0
  int64_t decay_iters() const { return decay_; }
  const LrScheduleConfig& config() const { return cfg_; }

 private:
  LrScheduleConfig cfg_;
  double warmup_ = 0;
  int64_t decay_ = 0;
};

}  // namespace moe::train
