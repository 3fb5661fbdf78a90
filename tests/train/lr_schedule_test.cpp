// The LR schedule against Megatron-Core's OptimizerParamScheduler formulas, evaluated by hand at
// the points where the cases change: warmup start and end, mid-decay, the end of the decay and
// after it; and the settings it refuses, each naming the flag.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <numbers>

#include "testutil.h"
#include "train/lr_schedule.h"

namespace moe::train {
namespace {

LrScheduleConfig cfg(double lr, double min_lr, int64_t warmup, const std::string& style) {
  LrScheduleConfig c;
  c.lr = lr, c.min_lr = min_lr, c.warmup_iters = warmup, c.style = style;
  return c;
}

TEST(LrSchedule, WarmupThenCosineToMin) {
  const LrSchedule s(cfg(1e-3, 1e-4, 10, "cosine"), 110);
  EXPECT_EQ(s.decay_iters(), 110);
  EXPECT_DOUBLE_EQ(s.lr_at(0), 0.0);  // Megatron's first iteration under warmup trains at 0
  EXPECT_DOUBLE_EQ(s.lr_at(1), 1e-4);
  EXPECT_DOUBLE_EQ(s.lr_at(5), 5e-4);
  EXPECT_DOUBLE_EQ(s.lr_at(10), 1e-3);  // warmup end: n <= warmup is still warmup
  EXPECT_DOUBLE_EQ(s.lr_at(11), 1e-4 + 0.5 * (std::cos(std::numbers::pi * 0.01) + 1) * 9e-4);
  EXPECT_NEAR(s.lr_at(60), 1e-4 + 0.5 * 9e-4, 1e-15);  // halfway through the decay
  EXPECT_NEAR(s.lr_at(85), 1e-4 + 0.5 * (std::cos(std::numbers::pi * 0.75) + 1) * 9e-4, 1e-15);
  EXPECT_NEAR(s.lr_at(110), 1e-4, 1e-15);  // decay end
  EXPECT_DOUBLE_EQ(s.lr_at(111), 1e-4);    // after: min_lr
  EXPECT_DOUBLE_EQ(s.lr_at(100000), 1e-4);
}

TEST(LrSchedule, LinearWithoutWarmup) {
  const LrSchedule s(cfg(2.0, 0.0, 0, "linear"), 100);
  EXPECT_DOUBLE_EQ(s.lr_at(0), 2.0);
  EXPECT_DOUBLE_EQ(s.lr_at(25), 1.5);
  EXPECT_DOUBLE_EQ(s.lr_at(50), 1.0);
  EXPECT_DOUBLE_EQ(s.lr_at(100), 0.0);
  EXPECT_DOUBLE_EQ(s.lr_at(101), 0.0);
}

// Megatron checks "constant" before the end of the decay: lr stays at max after it.
TEST(LrSchedule, ConstantAfterWarmupStaysAtMaxEvenPastTheDecay) {
  const LrSchedule s(cfg(3e-4, 1e-5, 4, "constant"), 20);
  EXPECT_DOUBLE_EQ(s.lr_at(0), 0.0);
  EXPECT_DOUBLE_EQ(s.lr_at(2), 1.5e-4);
  EXPECT_DOUBLE_EQ(s.lr_at(4), 3e-4);
  EXPECT_DOUBLE_EQ(s.lr_at(19), 3e-4);
  EXPECT_DOUBLE_EQ(s.lr_at(500), 3e-4);
}

TEST(LrSchedule, InverseSquareRoot) {
  const LrSchedule s(cfg(1.0, 0.1, 4, "inverse-square-root"), 1000);
  EXPECT_DOUBLE_EQ(s.lr_at(2), 0.5);     // warmup
  EXPECT_DOUBLE_EQ(s.lr_at(4), 1.0);     // warmup end
  EXPECT_DOUBLE_EQ(s.lr_at(16), 0.5);    // sqrt(4) / sqrt(16)
  EXPECT_DOUBLE_EQ(s.lr_at(100), 0.2);   // sqrt(4) / sqrt(100)
  EXPECT_DOUBLE_EQ(s.lr_at(900), 0.1);   // 2/30 clamped to min_lr
  EXPECT_DOUBLE_EQ(s.lr_at(1001), 0.1);  // past the decay
  const LrSchedule nowarm(cfg(1.0, 0.0, 0, "inverse-square-root"), 100);
  EXPECT_DOUBLE_EQ(nowarm.lr_at(0), 1.0);  // warmup and step both floored at 1
  EXPECT_DOUBLE_EQ(nowarm.lr_at(4), 0.5);
}

// Megatron multiplies the fraction by the decay steps without rounding.
TEST(LrSchedule, WarmupFractionIsNotRounded) {
  LrScheduleConfig c = cfg(1.0, 0.0, 0, "linear");
  c.warmup_fraction = 0.25;
  const LrSchedule s(c, 10);
  EXPECT_DOUBLE_EQ(s.warmup(), 2.5);
  EXPECT_DOUBLE_EQ(s.lr_at(1), 0.4);
  EXPECT_DOUBLE_EQ(s.lr_at(2), 0.8);
  EXPECT_DOUBLE_EQ(s.lr_at(3), 1.0 - 0.5 / 7.5);
  EXPECT_DOUBLE_EQ(s.lr_at(10), 0.0);
}

TEST(LrSchedule, WarmupInitAndSeparateDecayIters) {
  LrScheduleConfig c = cfg(1e-3, 1e-4, 10, "cosine");
  c.warmup_init = 1e-4, c.decay_iters = 50;
  const LrSchedule s(c, 100);
  EXPECT_EQ(s.decay_iters(), 50);
  EXPECT_DOUBLE_EQ(s.lr_at(0), 1e-4);
  EXPECT_DOUBLE_EQ(s.lr_at(5), 1e-4 + 9e-4 * 0.5);
  EXPECT_NEAR(s.lr_at(30), 1e-4 + 0.5 * 9e-4, 1e-15);
  EXPECT_DOUBLE_EQ(s.lr_at(75), 1e-4);  // decay ended at 50, training goes on to 100
}

TEST(LrSchedule, BadSettingsNameTheFlag) {
  auto err = [](LrScheduleConfig c, int64_t iters = 10) { return testing::input_error([&] { LrSchedule(c, iters); }); };
  LrScheduleConfig c;
  c.min_lr = 1.0;
  EXPECT_NE(err(c).find("--min_lr"), std::string::npos);
  c = {}, c.warmup_iters = 20;
  EXPECT_NE(err(c).find("--lr_warmup_iters"), std::string::npos);
  c = {}, c.warmup_iters = 10;  // equal: Megatron asserts warmup < decay
  EXPECT_NE(err(c).find("--lr_warmup_iters"), std::string::npos);
  c = {}, c.warmup_iters = 10, c.style = "constant";
  EXPECT_NE(err(c).find("--lr_warmup_iters"), std::string::npos);
  c = {}, c.warmup_iters = 2, c.warmup_fraction = 0.1;
  EXPECT_NE(err(c).find("--lr_warmup_fraction"), std::string::npos);
  c = {}, c.warmup_fraction = 1.0;
  EXPECT_NE(err(c).find("--lr_warmup_fraction"), std::string::npos);
  c = {}, c.style = "step";
  EXPECT_NE(err(c).find("--lr_decay_style"), std::string::npos);
  c = {}, c.lr = -1e-4;
  EXPECT_NE(err(c).find("--lr "), std::string::npos);
  c = {}, c.lr = std::numeric_limits<double>::infinity();
  EXPECT_NE(err(c).find("--lr "), std::string::npos);
  c = {}, c.lr = std::nan("");
  EXPECT_NE(err(c).find("--lr "), std::string::npos);
  c = {}, c.warmup_init = 1.0;
  EXPECT_NE(err(c).find("--lr_warmup_init"), std::string::npos);
  EXPECT_NE(err({}, 0).find("--lr_decay_iters"), std::string::npos);
  c = {}, c.decay_iters = -1;
  EXPECT_NE(err(c).find("--lr_decay_iters"), std::string::npos);
}

// Megatron accepts --lr 0 (with --min_lr 0): loss measured without changing the weights.
TEST(LrSchedule, ZeroLearningRateIsAccepted) {
  LrScheduleConfig c;
  c.lr = 0, c.min_lr = 0, c.warmup_iters = 2;
  LrSchedule s(c, 10);
  for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(s.lr_at(i), 0.0) << i;
}

}  // namespace
}  // namespace moe::train
