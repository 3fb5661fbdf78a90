#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "infer/sampler.h"

using namespace moe::infer;

TEST(Sampler, GreedyTakesArgmax) {
  Sampler s({0.0f});
  std::vector<float> l = {0.1f, 2.0f, 1.0f};
  EXPECT_EQ(s.sample(l, {}), 1);
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegative) {
  Sampler s({0.0f, 0, 1.0f, 2.0f});
  std::vector<float> l = {3.0f, 2.0f, -1.0f};
  std::vector<int32_t> hist = {0, 2};
  EXPECT_EQ(s.sample(l, hist), 1);  // 3/2 = 1.5 < 2
  EXPECT_FLOAT_EQ(l[0], 1.5f);
  EXPECT_FLOAT_EQ(l[2], -2.0f);
}

TEST(Sampler, TopKAndTopPRestrictTheSupport) {
  // probabilities ~ {0.515, 0.466, 0.0094, 0.0057, 0.0035}
  std::vector<float> base = {5.0f, 4.9f, 1.0f, 0.5f, 0.0f};
  Sampler k2({1.0f, 2, 1.0f, 1.0f, 1});
  Sampler p60({1.0f, 0, 0.6f, 1.0f, 2});  // needs ids 0 and 1
  Sampler p50({1.0f, 0, 0.5f, 1.0f, 3});  // id 0 alone reaches 0.5
  std::map<int, int> ck, c60, c50;
  for (int i = 0; i < 2000; ++i) {
    auto l = base;
    ck[k2.sample(l, {})]++;
    l = base;
    c60[p60.sample(l, {})]++;
    l = base;
    c50[p50.sample(l, {})]++;
  }
  EXPECT_EQ(ck.size(), 2u);
  EXPECT_GT(ck[0], 850);
  EXPECT_GT(ck[1], 750);
  EXPECT_EQ(c60.size(), 2u);
  EXPECT_EQ(c50.size(), 1u);
}

TEST(Sampler, SameSeedSameSamples) {
  std::vector<float> base = {1.0f, 1.1f, 0.9f, 1.2f};
  Sampler a({1.0f, 0, 1.0f, 1.0f, 77}), b({1.0f, 0, 1.0f, 1.0f, 77});
  for (int i = 0; i < 50; ++i) {
    auto la = base, lb = base;
    EXPECT_EQ(a.sample(la, {}), b.sample(lb, {}));
  }
}

TEST(Sampler, LogprobsAreLogSoftmax) {
  std::vector<float> l = {1.0f, 2.0f, 3.0f};
  std::vector<std::pair<int32_t, float>> top;
  float lp = token_logprob(l, 0, 2, &top);
  double z = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  EXPECT_NEAR(lp, 1.0 - z, 1e-6);
  ASSERT_EQ(top.size(), 2u);
  EXPECT_EQ(top[0].first, 2);
  EXPECT_NEAR(top[0].second, 3.0 - z, 1e-6);
}
