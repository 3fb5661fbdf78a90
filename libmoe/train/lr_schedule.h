// Learning-rate schedule with Megatron's OptimizerParamScheduler semantics: linear warmup from
// 0 over the warmup iterations, then cosine, linear or constant decay from lr to min_lr at
// lr_decay_iters, min_lr afterwards.
#pragma once
#include <cstdint>
#include <string>

namespace moe::train {

struct LrScheduleConfig {
  double lr = 1e-5, min_lr = 0.0;
  int64_t warmup_iters = 0;   // --lr_warmup_iters
  double warmup_fraction = 0; // --lr_warmup_fraction (of decay iters), if > 0
  int64_t decay_iters = 0;    // --lr_decay_iters; 0 = train_iters
  std::string style = "cosine";  // cosine | linear | constant | inverse-square-root
};

class LrSchedule {
 public:
  // InputError naming the flag for inconsistent settings.
  LrSchedule(LrScheduleConfig cfg, int64_t train_iters);
  // The learning rate of step `step` (0-based count of optimizer steps taken before it).
  double lr_at(int64_t step) const;
  int64_t warmup_iters() const { return warmup_; }
  int64_t decay_iters() const { return decay_; }

 private:
  LrScheduleConfig cfg_;
  int64_t warmup_ = 0, decay_ = 0;
};

}  // namespace moe::train
