#include "train/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace moe::train {

LrSchedule::LrSchedule(LrScheduleConfig cfg, int64_t train_iters) : cfg_(std::move(cfg)) {
  const std::string& s = cfg_.style;
  if (s != "cosine" && s != "linear" && s != "constant" && s != "inverse-square-root")
    throw_input("--lr_decay_style '{}' is not one of cosine, linear, constant, inverse-square-root", s);
  // Megatron accepts 0 <= --min_lr <= --lr, a zero rate included (loss without updates).
  if (!(std::isfinite(cfg_.lr) && cfg_.lr >= 0)) throw_input("--lr must be a finite number >= 0, got {}", cfg_.lr);
  if (!(cfg_.min_lr >= 0 && cfg_.min_lr <= cfg_.lr))
    throw_input("--min_lr {} must be in [0, --lr {}]", cfg_.min_lr, cfg_.lr);
  if (!(cfg_.warmup_init >= 0 && cfg_.warmup_init <= cfg_.lr))
    throw_input("--lr_warmup_init {} must be in [0, --lr {}]", cfg_.warmup_init, cfg_.lr);
  if (cfg_.decay_iters < 0) throw_input("--lr_decay_iters must be >= 0 (0: --train_iters), got {}", cfg_.decay_iters);
  decay_ = cfg_.decay_iters > 0 ? cfg_.decay_iters : train_iters;
  if (decay_ <= 0) throw_input("--lr_decay_iters / --train_iters must be > 0, got {}", decay_);
  if (cfg_.warmup_fraction > 0 && cfg_.warmup_iters > 0)
    throw_input("--lr_warmup_fraction and --lr_warmup_iters are exclusive; pass one");
  if (!(cfg_.warmup_fraction >= 0 && cfg_.warmup_fraction < 1))
    throw_input("--lr_warmup_fraction must be in [0, 1), got {}", cfg_.warmup_fraction);
  if (cfg_.warmup_iters < 0) throw_input("--lr_warmup_iters must be >= 0, got {}", cfg_.warmup_iters);
  warmup_ = cfg_.warmup_fraction > 0 ? cfg_.warmup_fraction * double(decay_) : double(cfg_.warmup_iters);
  if (warmup_ >= double(decay_))
    throw_input(
        "--lr_warmup_iters {} must be less than --lr_decay_iters {} (default: --train_iters); shorten the "
        "warmup or use --lr_warmup_fraction",
        cfg_.warmup_iters, decay_);
}

double LrSchedule::lr_at(int64_t step) const {
  const double max_lr = cfg_.lr, min_lr = cfg_.min_lr, n = double(step);
  // The order of the cases is Megatron's: warmup, constant, past the decay, then the style.
  if (warmup_ > 0 && n <= warmup_) return cfg_.warmup_init + (max_lr - cfg_.warmup_init) * n / warmup_;
  if (cfg_.style == "constant") return max_lr;
  if (step > decay_) return min_lr;
  if (cfg_.style == "inverse-square-root") {
    const double w = std::max(warmup_, 1.0);
    return std::max(min_lr, max_lr * std::sqrt(w) / std::sqrt(std::max(n, 1.0)));
  }
  const double ratio = (n - warmup_) / (double(decay_) - warmup_);
  const double coeff = cfg_.style == "linear" ? 1.0 - ratio : 0.5 * (std::cos(std::numbers::pi * ratio) + 1.0);
  return min_lr + coeff * (max_lr - min_lr);
}

}  // namespace moe::train
