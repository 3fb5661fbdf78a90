// The pipeline schedules as the CPU job model reads them: activation slots per chunk (1F1B and
// Megatron's interleaved order) and the step over unequal stages against the bubble formulas.
#include <gtest/gtest.h>

#include "plan/moectl_cpu_schedule.h"

namespace moe::plan {
namespace {

TEST(plan_moectl_cpu_schedule, OneFOneBKeepsStagesLeftMicroBatches) {
  EXPECT_EQ(pipeline_slots(1, 1, 0, 8), std::vector<int>({1}));
  EXPECT_EQ(pipeline_slots(4, 1, 0, 8), std::vector<int>({4}));
  EXPECT_EQ(pipeline_slots(4, 1, 3, 8), std::vector<int>({1}));
  EXPECT_EQ(pipeline_slots(4, 1, 0, 2), std::vector<int>({2}));  // fewer micro-batches than stages
}

TEST(plan_moectl_cpu_schedule, InterleavedSlotsFollowTheWarmUp) {
  // PP2 x VPP2, 4 micro-batches (8 virtual steps; forwards run chunk 0 for steps 0, 1, 4, 5,
  // backwards chunk 1 for steps 0, 1, 4, 5). Stage 0 warms up with (2-0-1)*2 + (2-1)*2 = 4
  // forwards (chunk 0 twice, chunk 1 twice); its steady phase adds chunk 0's third and fourth
  // before a chunk-0 backward frees one: {4, 2}.
  EXPECT_EQ(pipeline_slots(2, 2, 0, 4), std::vector<int>({4, 2}));
  // The last stage warms up with 2 forwards of chunk 0, then each forward is followed by a
  // backward of the same chunk: chunk 0 reaches 3, chunk 1 never holds more than one.
  EXPECT_EQ(pipeline_slots(2, 2, 1, 4), std::vector<int>({3, 1}));
  // Micro-batches equal to the stages: every forward before any backward.
  EXPECT_EQ(pipeline_slots(2, 2, 1, 2), std::vector<int>({2, 2}));
}

TEST(plan_moectl_cpu_schedule, StepMatchesTheBubbleFormulas) {
  const int p = 4, m = 8;
  const std::vector<double> equal(p, 1.0);
  // 1F1B: m micro-batches plus a bubble of (p-1)/(m+p-1) of the schedule.
  const double t = pipeline_step_s(equal, 1, m);
  EXPECT_DOUBLE_EQ(1 - m / t, double(p - 1) / (m + p - 1));
  // Interleaved with v chunks: (p-1)/(v m + p-1).
  const int v = 2;
  const double ti = pipeline_step_s(equal, v, m);
  EXPECT_DOUBLE_EQ(1 - m / ti, double(p - 1) / (v * m + p - 1));
  // A slower stage sets the steady pace.
  EXPECT_DOUBLE_EQ(pipeline_step_s({1.0, 2.0}, 1, 4), 3 * 2.0 + 3.0);
}

}  // namespace
}  // namespace moe::plan
