// The CPU job model by hand on the tiny MoE config (4 layers, 8 experts of 96, hidden 128,
// vocabulary 1024, untied): parameters per rank add up to the model, the distributed optimizer's
// shards and staging, pipeline slots multiply a stage's arena, and the time model reproduces its
// own calibration and splits the work by the layout. The measured check is
// tests/plan/plan_practice_test.py.
#include <gtest/gtest.h>

#include "plan/moectl_cpu_job.h"
#include "plan_testutil.h"

namespace moe::plan {
namespace {

model::ModelConfig tiny() { return model::load_hf_config(testing::source_dir() + "/configs/tiny-moe"); }

CpuJob job(int tp, int pp, int ep, int vpp = 1) {
  CpuJob j;
  j.layout = dist::ParallelLayout::from_flags(2, tp, pp, ep, 0, 1, vpp);
  j.seq_length = 64, j.global_batch_size = 4, j.micro_batch_size = 1;
  j.options.recompute.granularity = model::Recompute::kNone;
  j.options.sequence_parallel = tp > 1;
  return j;
}

CpuJob one_process() {
  CpuJob j = job(1, 1, 1);
  j.layout = dist::ParallelLayout{};
  return j;
}

TEST(plan_moectl_cpu_job, ParametersPerRankAddUpToTheModel) {
  const model::ModelConfig c = tiny();
  const double whole = moectl_cpu_job_memory(c, one_process()).at(0).params();
  // Hand count: embedding and head 2 x 1024 x 128, final norm 128; per layer qkv (4 + 2 x 2) x 32
  // x 128, proj 128 x 128, 2 norms + q/k norms 2 x 128 + 2 x 32, router 8 x 128, 8 experts of
  // 3 x 96 x 128.
  const double layer = 8 * 32 * 128 + 128 * 128 + 2 * 128 + 2 * 32 + 8 * 128 + 8 * 3 * 96 * 128;
  EXPECT_DOUBLE_EQ(whole, 2 * 1024 * 128 + 128 + 4 * layer);
  // EP2: the dense part on both ranks, half the experts on each.
  const auto ep = moectl_cpu_job_memory(c, job(1, 1, 2));
  EXPECT_DOUBLE_EQ(ep[0].expert_params + ep[1].expert_params, 4 * 8 * 3 * 96 * 128);
  EXPECT_DOUBLE_EQ(ep[0].dense_params, whole - 4 * 8 * 3 * 96 * 128);
  // PP2: the stages hold the model once.
  const auto pp = moectl_cpu_job_memory(c, job(1, 2, 1));
  EXPECT_DOUBLE_EQ(pp[0].params() + pp[1].params(), whole);
  // TP2: the vocabulary padded to 128 x 2 rows (1024 already is), split with the heads and the
  // experts' width; norms, router and q/k norms whole on both.
  const auto tp = moectl_cpu_job_memory(c, job(2, 1, 1));
  const double replicated = 128 + 4 * (2 * 128 + 2 * 32 + 8 * 128);
  EXPECT_DOUBLE_EQ(tp[0].params(), (whole - replicated) / 2 + replicated);
}

TEST(plan_moectl_cpu_job, DistributedOptimizerShardsAndStages) {
  const model::ModelConfig c = tiny();
  const double n = moectl_cpu_job_memory(c, one_process()).at(0).params();
  const auto dp = moectl_cpu_job_memory(c, job(1, 1, 1));
  // n is even: two equal shards of AdamW's two fp32 moments.
  EXPECT_DOUBLE_EQ(dp[0].optimizer, 2 * 4 * n / 2);
  EXPECT_DOUBLE_EQ(dp[1].optimizer, 2 * 4 * n / 2);
  // One piece (the shard is under 8M / 2 floats) staged for both ranks and this rank's part; the
  // first rank also holds Open MPI's reduce-scatter copy.
  EXPECT_DOUBLE_EQ(dp[1].comm_buffers, 4 * (n / 2) * 3);
  EXPECT_DOUBLE_EQ(dp[0].comm_buffers - dp[1].comm_buffers, 4 * (n / 2) * 2);
  // Replicated: every rank keeps both moments of every parameter, and stages nothing.
  CpuJob replicated = job(1, 1, 1);
  replicated.distributed_optimizer = false;
  const auto r = moectl_cpu_job_memory(c, replicated);
  EXPECT_DOUBLE_EQ(r[0].optimizer, 2 * 4 * n);
  EXPECT_DOUBLE_EQ(r[0].comm_buffers, 0);
}

TEST(plan_moectl_cpu_job, PipelineSlotsMultiplyTheStageArena) {
  // PP2 with 4 micro-batches: the first stage keeps 2 in flight, the last 1; both stages have the
  // same layers' arenas, so the first holds twice the last's activations (the head's chunk is
  // workspace, not arena).
  const auto pp = moectl_cpu_job_memory(tiny(), job(1, 2, 1));
  EXPECT_NEAR(pp[0].activations, 2 * pp[1].activations, 1e-6 * pp[0].activations);
  EXPECT_GT(pp[1].workspace, pp[0].workspace);
}

TEST(plan_moectl_cpu_job, TimeReproducesItsCalibrationAndSplitsTheWork) {
  const model::ModelConfig c = tiny();
  CpuRates r;
  r.one_process_step_s = 2.0, r.collective_latency_s = 0, r.link_gbps = 1e9;
  // One process: the calibration itself.
  EXPECT_NEAR(moectl_cpu_job_time(c, one_process(), r).at(0).step_s, 2.0, 1e-9);
  // DP2 with free links: each rank half the micro-batches and half the optimizer.
  EXPECT_NEAR(moectl_cpu_job_time(c, job(1, 1, 1), r).at(0).step_s, 1.0, 1e-6);
  // Collectives cost their rendezvous: DP2's are the step's reduce-scatter and all-gather and
  // its small all-reduces.
  r.collective_latency_s = 0.01;
  const CpuRankTime t = moectl_cpu_job_time(c, job(1, 1, 1), r).at(0);
  EXPECT_NEAR(t.comm_s, 0.01 * double(t.collectives), 1e-6);
  // PP2: the pipeline's bubble is what a rank does not compute; the step is the slower rank's
  // (the last stage, with the head and more parameters to update).
  r.collective_latency_s = 0;
  const auto pp = moectl_cpu_job_time(c, job(1, 2, 1), r);
  EXPECT_GT(pp[0].bubble_s, pp[1].bubble_s);
  EXPECT_NEAR(pp[1].step_s, pp[1].compute_s + pp[1].bubble_s + pp[1].optimizer_s, 1e-9);
  EXPECT_GE(pp[0].step_s, pp[0].compute_s + pp[0].bubble_s + pp[0].optimizer_s);
}

}  // namespace
}  // namespace moe::plan
