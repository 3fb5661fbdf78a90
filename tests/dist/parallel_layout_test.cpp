// ParallelLayout's rules (errors naming the flag) and the process groups it generates, checked
// against rank lists written out by hand from Megatron's tp-cp-ep-dp-pp order.
#include <gtest/gtest.h>

#include "dist/local_communicator.h"
#include "dist/process_groups.h"
#include "testutil.h"

namespace moe::dist {
namespace {

using Groups = std::vector<std::vector<int>>;

std::string error_of(const std::function<void()>& fn) { return moe::testing::input_error(fn); }

TEST(dist_parallel_layout, FromFlagsDerivesDataParallelAndEtp) {
  const ParallelLayout l = ParallelLayout::from_flags(16, 2, 2, 4, 1, 1, 1);
  EXPECT_EQ(l, (ParallelLayout{.tp = 2, .pp = 2, .vpp = 1, .ep = 4, .etp = 1, .cp = 1, .dp = 4}));
  EXPECT_EQ(l.world(), 16);
  EXPECT_EQ(l.edp(), 2);  // 2 x 1 x 4 ranks of a stage / (4 x 1)
  EXPECT_EQ(to_string(l), "tp2,pp2,vpp1,ep4,etp1,cp1,dp4");
  EXPECT_EQ(ParallelLayout::from_flags(8, 2, 1, 1, 0, 1, 1).etp, 2);  // 0: Megatron's default, etp = tp
  EXPECT_EQ(ParallelLayout::from_flags(8, 1, 1, 8, 1, 2, 1).dp, 4);   // ep folds over cp x dp
}

TEST(dist_parallel_layout, ErrorsNameTheFlag) {
  auto flags = [](int w, int tp, int pp, int ep, int etp, int cp, int vpp) {
    return error_of([&] { ParallelLayout::from_flags(w, tp, pp, ep, etp, cp, vpp); });
  };
  EXPECT_NE(flags(8, 0, 1, 1, 1, 1, 1).find("--tensor_model_parallel_size 0: must be >= 1"), std::string::npos);
  EXPECT_NE(flags(8, 1, -1, 1, 1, 1, 1).find("--pipeline_model_parallel_size -1"), std::string::npos);
  EXPECT_NE(flags(8, 1, 1, 1, 1, 0, 1).find("--context_parallel_size 0"), std::string::npos);
  EXPECT_NE(flags(8, 3, 1, 1, 1, 1, 1).find("does not divide the world size 8"), std::string::npos);
  EXPECT_NE(flags(8, 1, 1, 1, 1, 1, 2).find("--virtual_pipeline_model_parallel_size 2 needs"), std::string::npos);
  // EP x ETP = 4 x 2 does not divide the 4 ranks of a stage (tp2 x dp2, pp2).
  const std::string fold = flags(8, 2, 2, 4, 2, 1, 1);
  EXPECT_NE(fold.find("--expert_model_parallel_size 4 x --expert_tensor_parallel_size 2 = 8 must divide the 4"),
            std::string::npos)
      << fold;
  EXPECT_EQ(ParallelLayout{}.invalid_reason(), "");
  EXPECT_NE((ParallelLayout{.ep = 0}).invalid_reason().find("--expert_model_parallel_size 0"), std::string::npos);
  EXPECT_NE(error_of([] { ParallelLayout{.ep = 2}.validate(); }).find("must divide the 1 ranks"), std::string::npos);
}

// 8 ranks, TP2 PP2 DP2: rank = tp + 2 dp + 4 pp.
TEST(dist_process_groups, Tp2Pp2Dp2) {
  const ParallelLayout l = ParallelLayout::from_flags(8, 2, 2, 1, 0, 1, 1);
  EXPECT_EQ(group_ranks(l, Group::kTp), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(group_ranks(l, Group::kDp), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(group_ranks(l, Group::kDpCp), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(group_ranks(l, Group::kCp), (Groups{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}}));
  EXPECT_EQ(group_ranks(l, Group::kPp), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(group_ranks(l, Group::kEmbedding), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  // No experts: EP 1, ETP = TP, so the expert groups are the dense ones.
  EXPECT_EQ(group_ranks(l, Group::kEtp), group_ranks(l, Group::kTp));
  EXPECT_EQ(group_ranks(l, Group::kEdp), group_ranks(l, Group::kDp));
  EXPECT_EQ(group_ranks(l, Group::kEp), (Groups{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}}));
}

// 16 ranks, TP2 EP4 ETP1 PP2 (DP4): dense rank = tp + 2 dp + 8 pp; the MoE view of a stage's 8
// ranks is ep + 4 edp (ETP1, EDP2).
TEST(dist_process_groups, Tp2Ep4Etp1Pp2) {
  const ParallelLayout l = ParallelLayout::from_flags(16, 2, 2, 4, 1, 1, 1);
  EXPECT_EQ(group_ranks(l, Group::kTp), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}, {12, 13}, {14, 15}}));
  EXPECT_EQ(group_ranks(l, Group::kDp), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}, {8, 10, 12, 14}, {9, 11, 13, 15}}));
  EXPECT_EQ(group_ranks(l, Group::kPp), (Groups{{0, 8}, {1, 9}, {2, 10}, {3, 11}, {4, 12}, {5, 13}, {6, 14}, {7, 15}}));
  EXPECT_EQ(group_ranks(l, Group::kEp), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}, {12, 13, 14, 15}}));
  EXPECT_EQ(group_ranks(l, Group::kEdp),
            (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}, {8, 12}, {9, 13}, {10, 14}, {11, 15}}));
  EXPECT_EQ(group_ranks(l, Group::kEtp).size(), 16u);
  EXPECT_EQ(group_ranks(l, Group::kEtp)[5], std::vector<int>{5});
}

// 16 ranks, TP2 CP2 PP2 DP2, EP4 ETP1: cp sits between tp and dp; EP folds over tp x cp.
TEST(dist_process_groups, Tp2Cp2Pp2Dp2Ep4) {
  const ParallelLayout l = ParallelLayout::from_flags(16, 2, 2, 4, 1, 2, 1);
  EXPECT_EQ(l.dp, 2);
  EXPECT_EQ(group_ranks(l, Group::kCp), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}, {8, 10}, {9, 11}, {12, 14}, {13, 15}}));
  EXPECT_EQ(group_ranks(l, Group::kDp), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}, {8, 12}, {9, 13}, {10, 14}, {11, 15}}));
  EXPECT_EQ(group_ranks(l, Group::kDpCp), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}, {8, 10, 12, 14}, {9, 11, 13, 15}}));
  EXPECT_EQ(group_ranks(l, Group::kEp), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}, {12, 13, 14, 15}}));
  EXPECT_EQ(group_ranks(l, Group::kEdp),
            (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}, {8, 12}, {9, 13}, {10, 14}, {11, 15}}));
}

// 8 ranks, TP2 ETP2 EP2 (DP4): expert rank = etp + 2 ep + 4 edp.
TEST(dist_process_groups, Etp2Ep2Dp4) {
  const ParallelLayout l = ParallelLayout::from_flags(8, 2, 1, 2, 2, 1, 1);
  EXPECT_EQ(group_ranks(l, Group::kEtp), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(group_ranks(l, Group::kEp), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(group_ranks(l, Group::kEdp), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
}

// PP4: the embedding group is each pipeline's first and last stage; the middle stages are alone.
TEST(dist_process_groups, EmbeddingGroupOfALongPipeline) {
  const ParallelLayout l = ParallelLayout::from_flags(8, 1, 4, 1, 0, 1, 1);
  EXPECT_EQ(group_ranks(l, Group::kPp), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  EXPECT_EQ(group_ranks(l, Group::kEmbedding), (Groups{{0, 6}, {2}, {4}, {1, 7}, {3}, {5}}));
}

// Every kind partitions the world, for many layouts.
TEST(dist_process_groups, EveryKindPartitionsTheWorld) {
  for (int tp : {1, 2, 4})
    for (int pp : {1, 2, 3})
      for (int cp : {1, 2})
        for (int dp : {1, 2, 4})
          for (int ep : {1, 2, 4, 8})
            for (int etp : {1, 2}) {
              const ParallelLayout l{.tp = tp, .pp = pp, .ep = ep, .etp = etp, .cp = cp, .dp = dp};
              if (!l.invalid_reason().empty()) continue;
              for (Group g : kAllGroups) {
                std::vector<int> seen(size_t(l.world()), 0);
                for (const auto& grp : group_ranks(l, g))
                  for (int r : grp) ++seen[size_t(r)];
                for (int n : seen) ASSERT_EQ(n, 1) << to_string(l) << " " << group_name(g);
              }
              // Both views share the pipelines: a stage is the same ranks for dense and MoE layers.
              const auto ep_groups = group_ranks(l, Group::kEp);
              for (const auto& grp : ep_groups)
                for (int r : grp) ASSERT_EQ(r / (l.world() / pp), grp[0] / (l.world() / pp)) << to_string(l);
            }
}

TEST(dist_process_groups, OneProcessIsLocalEverywhere) {
  ProcessGroups g = ProcessGroups::local();
  for (Group k : kAllGroups) {
    EXPECT_EQ(g.get(k).size(), 1);
    EXPECT_EQ(g.get(k).rank(), 0);
    EXPECT_EQ(g.get(k).name(), group_name(k));
  }
  LocalCommunicator world;
  const std::string e = error_of([&] { ProcessGroups(ParallelLayout{.tp = 2}, world); });
  EXPECT_NE(e.find("needs 2 ranks"), std::string::npos) << e;
}

}  // namespace
}  // namespace moe::dist
