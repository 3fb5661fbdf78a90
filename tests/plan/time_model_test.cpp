// Time model: Megatron's FLOPs per token against the values in reference/perf-anchors.md
// section 1.4, group spans from the rank order, bubble, and links that change the answer.
#include <gtest/gtest.h>

#include "plan/time_model.h"
#include "plan_testutil.h"

namespace moe::plan {
namespace {

using testing::cluster;
using testing::example_model;

TEST(plan_time_model, MegatronFlopsPerTokenMatchThePublishedSplit) {
  // GFLOP/token (fwd+bwd) at seq 4096, from a line-by-line port of num_floating_point_operations.
  const ModelShape q30 = example_model("Qwen3-30B-A3B");
  const auto f30 = q30.flops_per_token(4096, q30.padded_vocab(1));
  EXPECT_NEAR(f30.total() / 1e9, 23.01, 0.01);
  EXPECT_NEAR(f30.moe_mlp / 1e9, 10.87, 0.01);
  EXPECT_NEAR(f30.attention_linear / 1e9, 5.44, 0.01);
  EXPECT_NEAR(f30.logits / 1e9, 1.87, 0.01);
  EXPECT_NEAR(f30.attention_core / 1e9, 4.83, 0.01);
  const ModelShape q235 = example_model("Qwen3-235B-A22B");
  EXPECT_NEAR(q235.flops_per_token(4096, q235.padded_vocab(1)).total() / 1e9, 148.03, 0.02);
  const ModelShape mix = example_model("Mixtral-8x7B");
  EXPECT_NEAR(mix.flops_per_token(4096, mix.padded_vocab(1)).total() / 1e9, 79.71, 0.02);
}

TEST(plan_time_model, GroupSpansFollowTheRankOrder) {
  EXPECT_FALSE(group_span(8, 1, 8).crosses_nodes());  // TP8 inside a node
  const GroupSpan across = group_span(8, 8, 8);       // stride of a node: every member elsewhere
  EXPECT_TRUE(across.crosses_nodes());
  EXPECT_EQ(across.per_node, 1);
  EXPECT_DOUBLE_EQ(across.off_node_fraction(), 7.0 / 8);
  const GroupSpan ep32 = group_span(32, 1, 8);  // EP32 with ETP1: 8 per node over 4 nodes
  EXPECT_EQ(ep32.per_node, 8);
  EXPECT_DOUBLE_EQ(ep32.off_node_fraction(), 24.0 / 32);
  EXPECT_EQ(group_span(4, 2, 8).per_node, 4);  // CP4 after TP2: still one node
}

TEST(plan_time_model, BubbleAndInterleaving) {
  const ModelShape m = example_model("Mixtral-8x7B");
  const Cluster c = cluster("H100-SXM-80G", 8);
  TrainingOptions t;
  t.global_batch_size = 256;
  Layout l =
      parse_layout("tp1,pp4,ep8,etp1,mbs1", "test", c.world(), 1, Recompute::kNone);  // dp 16 -> 16 micro-batches
  TimeEstimate a = estimate_time(m, l, t, c, estimate_memory(m, l, t));
  EXPECT_EQ(a.microbatches, 16);
  EXPECT_NEAR(a.bubble_fraction, 3.0 / (16 + 3), 1e-12);
  l.vpp = 8;
  TimeEstimate b = estimate_time(m, l, t, c, estimate_memory(m, l, t));
  EXPECT_NEAR(b.bubble_fraction, (3.0 / 8) / (16 + 3.0 / 8), 1e-12);
  EXPECT_LT(b.step_s, a.step_s);  // interleaving shrinks the bubble (+10% in Narayanan et al.)
}

TEST(plan_time_model, SlowerLinksAndCrossNodeGroupsCostTime) {
  const ModelShape m = example_model("Qwen3-30B-A3B");
  Cluster c = cluster("H100-SXM-80G", 2);
  TrainingOptions t;
  t.global_batch_size = 256;
  auto step = [&](const char* s, const Cluster& cl) {
    Layout l = parse_layout(s, "test", cl.world(), 1, Recompute::kNone);
    return estimate_time(m, l, t, cl, estimate_memory(m, l, t));
  };
  const TimeEstimate in_node = step("tp1,pp2,ep8,etp1", c), across = step("tp1,pp1,ep16,etp1", c);
  EXPECT_STREQ(in_node.ep_link, "NVLink");
  EXPECT_STREQ(across.ep_link, "network");
  EXPECT_GT(across.microbatch.ep_comm, 5 * in_node.microbatch.ep_comm / 2);
  Cluster slow = c;
  slow.gpu.inter_node_gbps /= 4;
  EXPECT_GT(step("tp1,pp1,ep16,etp1", slow).step_s, across.step_s);
  // MFU is model FLOPs over peak: the same for any peak-scaled GPU at equal time.
  EXPECT_NEAR(in_node.mfu, in_node.tflops_per_gpu / c.gpu.bf16_tflops, 1e-12);
  EXPECT_NEAR(in_node.tokens_per_s_per_gpu * in_node.step_s * c.world(), 256.0 * 4096, 1e-3);
}

TEST(plan_time_model, FullRecomputeAddsAForwardPass) {
  const ModelShape m = example_model("Qwen3-30B-A3B");
  const Cluster c = cluster("H100-SXM-80G", 1);
  TrainingOptions t;
  Layout l = parse_layout("tp1,pp1,ep8,etp1", "test", 8, 1, Recompute::kNone);
  const TimeEstimate none = estimate_time(m, l, t, c, estimate_memory(m, l, t));
  l.recompute = Recompute::kFull;
  const TimeEstimate full = estimate_time(m, l, t, c, estimate_memory(m, l, t));
  EXPECT_EQ(none.microbatch.recompute, 0);
  // The layers' GEMMs again in forward (a third of fwd+bwd), the logits not.
  EXPECT_GT(full.microbatch.recompute, 0.25 * none.microbatch.compute);
  EXPECT_LT(full.microbatch.recompute, 0.34 * none.microbatch.compute + none.microbatch.ep_comm);
}

}  // namespace
}  // namespace moe::plan
