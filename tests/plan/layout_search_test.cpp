// Layout search: Megatron's validity rules, fixed sizes, rejection of layouts over memory with
// the reason and a suggestion, and bad input.
#include <gtest/gtest.h>

#include "plan/layout_search.h"
#include "plan_testutil.h"
#include "testutil.h"

namespace moe::plan {
namespace {

using testing::cluster;
using testing::example_model;

Layout L(const std::string& s, int world) { return parse_layout(s, "--why_not", world, 1, Recompute::kNone); }

TEST(plan_layout_text, ParsesDefaultsAndRoundTrips) {
  Layout l = L("tp2,pp4,ep8,recompute=full", 64);
  EXPECT_EQ(l.tp, 2);
  EXPECT_EQ(l.pp, 4);
  EXPECT_EQ(l.ep, 8);
  EXPECT_EQ(l.etp, 2);  // defaults to tp
  EXPECT_EQ(l.dp, 8);   // 64 / (2 x 4)
  EXPECT_EQ(l.recompute, Recompute::kFull);
  EXPECT_TRUE(l.sequence_parallel);
  EXPECT_EQ(to_string(l), "tp2,pp4,vpp1,ep8,etp2,cp1,dp8,mbs1,recompute=full");
  EXPECT_EQ(L(to_string(l), 64), l);
  EXPECT_NE(moe::testing::input_error([] { L("tp2,xx3", 8); }).find("unknown key 'xx'"), std::string::npos);
  EXPECT_NE(moe::testing::input_error([] { L("tp0", 8); }).find("positive integer"), std::string::npos);
  EXPECT_NE(moe::testing::input_error([] { L("tp3", 8); }).find("does not divide the 8 GPUs"), std::string::npos);
  EXPECT_NE(moe::testing::input_error([] { L("recompute=some", 8); }).find("none, selective or full"),
            std::string::npos);
}

TEST(plan_layout_rules, MegatronConstraints) {
  const ModelShape m = example_model("Qwen3-30B-A3B");  // 48 layers, 32 heads / 4 groups, 128 experts
  const Cluster c = cluster("H100-SXM-80G", 2);
  const TrainingOptions t;
  EXPECT_EQ(invalid_reason(m, L("tp2,pp2,ep8,etp1", 16), t, c), "");
  EXPECT_NE(invalid_reason(m, L("tp8", 16), t, c).find("query groups"), std::string::npos);  // 4 groups
  Layout no_sp = L("tp2,ep4,etp1", 16);
  no_sp.sequence_parallel = false;
  EXPECT_NE(invalid_reason(m, no_sp, t, c).find("sequence parallel"), std::string::npos);
  EXPECT_NE(invalid_reason(m, L("tp1,pp1,ep16,etp2", 16), t, c).find("does not divide tp x cp x dp"),
            std::string::npos);  // 32 > 16
  EXPECT_NE(invalid_reason(m, L("ep3", 16), t, c).find("experts"), std::string::npos);
  EXPECT_NE(invalid_reason(m, L("pp2,vpp20", 16), t, c).find("do not split"), std::string::npos);
  EXPECT_NE(invalid_reason(m, L("pp1,vpp2", 16), t, c).find("needs pp > 1"), std::string::npos);
  TrainingOptions small = t;
  small.global_batch_size = 24;  // 24 / (1 x 8) = 3 micro-batches, not a multiple of pp 2
  EXPECT_NE(invalid_reason(m, L("pp2,vpp2,ep8", 16), small, c).find("interleaved"), std::string::npos);
  EXPECT_NE(invalid_reason(m, L("tp1,dp16,mbs4", 16), small, c).find("global_batch_size"), std::string::npos);
  TrainingOptions odd = t;
  odd.seq_length = 4098;
  EXPECT_NE(invalid_reason(m, L("cp4", 16), odd, c).find("2 x cp"), std::string::npos);
}

TEST(plan_layout_search, EveryLayoutIsValidRankedAndFixedSizesRestrict) {
  const ModelShape m = example_model("Qwen3-30B-A3B");
  const Cluster c = cluster("H100-SXM-80G", 2);
  TrainingOptions t;
  t.global_batch_size = 256;
  const SearchResult r = search_layouts(m, t, c, FixedSizes{}, 50);
  ASSERT_GT(r.fitting.size(), 100u);
  for (size_t i = 0; i < r.fitting.size(); ++i) {
    const Candidate& x = r.fitting[i];
    ASSERT_EQ(invalid_reason(m, x.layout, t, c), "") << to_string(x.layout);
    ASSERT_LE(x.peak_gib(), c.gpu.memory_gib);
    ASSERT_NEAR(ranking_key(x) / x.time.step_s, 1.0, 0.02);
    if (i > 0) {
      ASSERT_LE(ranking_key(r.fitting[i - 1]), ranking_key(x));
    }
  }
  for (const Candidate& x : r.excluded) {
    EXPECT_GT(x.peak_gib(), c.gpu.memory_gib);
    EXPECT_NE(x.excluded_by.find("GiB over"), std::string::npos);
  }
  FixedSizes f;
  f.ep = 16;
  f.recompute = Recompute::kSelective;
  const SearchResult only = search_layouts(m, t, c, f, 0);
  ASSERT_FALSE(only.fitting.empty());
  for (const Candidate& x : only.fitting) {
    EXPECT_EQ(x.layout.ep, 16);
    EXPECT_EQ(x.layout.recompute, Recompute::kSelective);
  }
  EXPECT_LT(only.enumerated, r.enumerated);
}

// The pruned search (rules tested as soon as their sizes are chosen) finds exactly the layouts a
// brute-force pass over every combination accepts.
TEST(plan_layout_search, PrunedSearchEnumeratesEveryValidLayout) {
  for (const char* name : {"Qwen3-30B-A3B", "Mixtral-8x7B", "Qwen2-57B-A14B"}) {
    const ModelShape m = example_model(name);
    const Cluster c = cluster("H100-SXM-80G", 2);
    TrainingOptions t;
    t.global_batch_size = 256;
    FixedSizes f;
    f.micro_batch_size = 2;
    const int W = c.world();
    int64_t valid = 0;
    for (int tp = 1; tp <= W; ++tp)
      for (int cp = 1; cp <= W; ++cp)
        for (int pp = 1; pp <= W; ++pp) {
          if (W % (tp * cp * pp) != 0) continue;
          const int dp = W / (tp * cp * pp);
          for (int vpp = 1; vpp <= 64; ++vpp)  // the search's cap on vpp
            for (int ep = 1; ep <= W; ++ep)
              for (int etp = 1; etp <= W; ++etp) {
                Layout l{{tp, pp, vpp, ep, etp, cp, dp}, 2, Recompute::kNone, tp > 1 && t.allow_sequence_parallel};
                if (invalid_reason(m, l, t, c).empty()) ++valid;
              }
        }
    EXPECT_GT(valid, 0) << name;
    EXPECT_EQ(search_layouts(m, t, c, f, 0).enumerated, 3 * valid) << name;  // x 3 recompute modes
  }
}

// QA #12: the search on the largest cluster plan accepts, at a highly composite GPU count (144
// divisors), finishes; before, divisors were found by trial division up to the count, per loop.
TEST(plan_layout_search, QA12_LargestClustersFinish) {
  const ModelShape m = example_model("Qwen3-235B-A22B");
  // 110880 and 131072 GPUs, with a global batch that their data-parallel sizes can divide
  for (auto [nnodes, per_node, batch] : {std::tuple{13860, 8, 887040}, {128, 1024, 1 << 20}}) {
    const Cluster c = cluster("H100-SXM-80G", nnodes, per_node);
    ASSERT_LE(c.world(), kMaxGpus);
    TrainingOptions t;
    t.global_batch_size = batch;
    const SearchResult r = search_layouts(m, t, c, FixedSizes{}, 10, 10);
    EXPECT_GT(r.enumerated, 0);
    for (const auto& x : r.fitting) EXPECT_EQ(x.layout.world(), c.world());
  }
}

TEST(plan_layout_search, FixedSizeThatDividesNothingIsAnInputError) {
  const ModelShape m = example_model("Qwen3-30B-A3B");
  const Cluster c = cluster("H100-SXM-80G", 1);
  FixedSizes f;
  f.pp = 5;  // divides neither 8 GPUs nor, evenly, 48 layers
  EXPECT_NE(moe::testing::input_error([&] { search_layouts(m, TrainingOptions{}, c, f); }).find("no valid layout"),
            std::string::npos);
  Cluster none = c;
  none.nnodes = 0;
  EXPECT_NE(moe::testing::input_error([&] { search_layouts(m, TrainingOptions{}, none, FixedSizes{}); }).find("0 GPUs"),
            std::string::npos);
}

TEST(plan_layout_search, UnknownGpuPresetListsTheKnownOnes) {
  const std::string msg =
      moe::testing::input_error([] { find_gpu_preset("B300-999G", {testing::source_dir() + "/configs/gpus"}); });
  EXPECT_NE(msg.find("unknown GPU preset"), std::string::npos);
  EXPECT_NE(msg.find("H100-SXM-80G"), std::string::npos);
  EXPECT_NE(msg.find("A800-80G"), std::string::npos);
}

// Mixtral-8x22B (56 layers, hidden 6144, 8 experts) in bf16 with Adam on 8 x 80 GB at PP4 TP1
// EP2 DP2 does not fit: the planner says by how much, that the optimizer dominates, and what fits.
TEST(plan_layout_search, Mixtral8x22bOnEightGpusIsRejectedWithAReasonAndASuggestion) {
  const ModelShape m = example_model("Mixtral-8x22B");
  Cluster c = cluster("H100-SXM-80G", 1);
  c.gpu.memory_gib = 80;
  TrainingOptions t;
  t.use_distributed_optimizer = false;  // plain Adam
  const Layout l = L("tp1,pp4,ep2,etp1,dp2", 8);
  ASSERT_EQ(invalid_reason(m, l, t, c), "");
  const Candidate cand = evaluate(m, l, t, c);
  EXPECT_FALSE(cand.fits);
  const StageMemory& s = cand.memory.peak();
  // Stage 0: 14 layers x (attention + 4 of 8 experts) + embedding, 18 bytes per parameter.
  const double params =
      14.0 * (m.attention_params() + m.layer_norm_params() + m.router_params() + 4.0 * m.expert_params()) +
      32000.0 * 6144;
  EXPECT_NEAR(s.weights + s.gradients + s.optimizer, 18 * params, 1e-6 * params);
  double dominant = 0;
  EXPECT_EQ(dominant_component(s, &dominant), "optimizer");
  EXPECT_NEAR(dominant / kGiB, 12 * params / kGiB, 0.01);
  EXPECT_GT(cand.peak_gib() - 80, 200);  // more than 200 GiB over
  EXPECT_NE(cand.excluded_by.find(fmt::format("{:.1f} GiB over", cand.peak_gib() - 80)), std::string::npos);
  EXPECT_NE(cand.excluded_by.find("optimizer dominates"), std::string::npos);

  const std::string why = why_not(m, l, t, c);
  EXPECT_NE(why.find("does not fit"), std::string::npos);
  EXPECT_NE(why.find("--use_distributed_optimizer true"), std::string::npos);
  EXPECT_NE(why.find("--recompute_granularity full"), std::string::npos);
  EXPECT_NE(why.find("no layout of this model fits on 8 x 80 GiB"), std::string::npos);
  EXPECT_NE(why.find("CPU offload"), std::string::npos);
  // The suggested larger cluster really has a fitting layout, and the next smaller one none.
  const size_t at = why.find("--nnodes ");
  ASSERT_NE(at, std::string::npos);
  const int nodes = std::stoi(why.substr(at + 9));
  Cluster bigger = c;
  bigger.nnodes = nodes;
  EXPECT_FALSE(search_layouts(m, t, bigger, FixedSizes{}, 0).fitting.empty());
  bigger.nnodes = nodes / 2;
  EXPECT_TRUE(search_layouts(m, t, bigger, FixedSizes{}, 0).fitting.empty());
}

}  // namespace
}  // namespace moe::plan
