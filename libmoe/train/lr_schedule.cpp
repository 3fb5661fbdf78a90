#include "train/lr_schedule.h"

#include <cmath>

#include "core/error.h"

namespace moe::train {

LrSchedule::LrSchedule(LrScheduleConfig cfg, int64_t train_iters) : cfg_(std::move(cfg)) {
  decay_ = cfg_.decay_iters > 0 ? cfg_.decay_iters : train_iters;
  if (cfg_.warmup_fraction > 0 && cfg_.warmup_iters > 0)
    throw_input("--lr_warmup_fraction and --lr_warmup_iters are exclusive; pass one");
  if (cfg_.warmup_fraction < 0 || cfg_.warmup_fraction > 1)
    throw_input("--lr_warmup_fraction must be in [0, 1], got {}", cfg_.warmup_fraction);
  warmup_ = cfg_.warmup_fraction > 0 ? int64_t(cfg_.warmup_fraction * double(decay_)) : cfg_.warmup_iters;
  if (cfg_.lr <= 0) throw_input("--lr must be > 0, got {}", cfg_.lr);
  if (cfg_.min_lr < 0 || cfg_.min_lr > cfg_.lr) throw_input("--min_lr {} must be in [0, --lr {}]", cfg_.min_lr, cfg_.lr);
  if (warmup_ < 0) throw_input("--lr_warmup_iters must be >= 0");
  if (cfg_.style != "constant" && warmup_ > decay_)
    throw_input("--lr_warmup_iters {} exceeds --lr_decay_iters {}", warmup_, decay_);
  if (cfg_.style != "cosine" && cfg_.style != "linear" && cfg_.style != "constant" &&
      cfg_.style != "inverse-square-root")
    throw_input("--lr_decay_style '{}' is not one of cosine, linear, constant, inverse-square-root", cfg_.style);
}

double LrSchedule::lr_at(int64_t step) const {
  const double max_lr = cfg_.lr, min_lr = cfg_.min_lr;
  if (warmup_ > 0 && step <= warmup_) return max_lr * double(step) / double(warmup_);
  if (cfg_.style == "constant") return max_lr;
  if (cfg_.style == "inverse-square-root") {
    const double w = double(std::max<int64_t>(warmup_, 1));
    return std::max(min_lr, max_lr * std::sqrt(w) / std::sqrt(double(std::max<int64_t>(step, 1))));
  }
  if (step > decay_) return min_lr;
  const double ratio = double(step - warmup_) / double(std::max<int64_t>(decay_ - warmup_, 1));
  const double coeff = cfg_.style == "linear" ? 1.0 - ratio : 0.5 * (std::cos(M_PI * ratio) + 1.0);
  return min_lr + coeff * (max_lr - min_lr);
}

}  // namespace moe::train
