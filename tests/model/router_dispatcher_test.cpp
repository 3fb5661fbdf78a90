// Router maths and the token dispatcher's properties (DESIGN.md section 6): both router
// semantics, permute-then-unpermute is the identity, per-expert sets, empty experts, all
// tokens to one expert; grouped experts equal a per-token sequential reference.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <set>
#include <utility>

#include "core/rng.h"
#include "model/context.h"
#include "model/moe_layer.h"
#include "model/router.h"
#include "model/token_dispatcher.h"

using namespace moe;
using namespace moe::model;

TEST(Router, PreSoftmaxKeepsFullSoftmaxProbabilities) {
  std::vector<float> logits = {1.0f, 3.0f, 2.0f, 0.0f};
  Routing r = route_topk(Backend{}, logits.data(), 1, 4, 2, /*pre_softmax=*/true);
  double z = std::exp(1.0) + std::exp(3.0) + std::exp(2.0) + std::exp(0.0);
  EXPECT_EQ(r.expert_TK, (std::vector<int32_t>{1, 2}));
  EXPECT_NEAR(r.weight_TK[0], std::exp(3.0) / z, 1e-6);
  EXPECT_NEAR(r.weight_TK[1], std::exp(2.0) / z, 1e-6);
}

TEST(Router, TopkThenSoftmaxRenormalises) {
  std::vector<float> logits = {1.0f, 3.0f, 2.0f, 0.0f};
  Routing r = route_topk(Backend{}, logits.data(), 1, 4, 2, /*pre_softmax=*/false);
  EXPECT_EQ(r.expert_TK, (std::vector<int32_t>{1, 2}));
  EXPECT_NEAR(r.weight_TK[0] + r.weight_TK[1], 1.0, 1e-6);
  EXPECT_NEAR(r.weight_TK[0], std::exp(1.0) / (std::exp(1.0) + 1.0), 1e-6);
}

TEST(Router, TiesPickLowerExpertId) {
  std::vector<float> logits = {2.0f, 2.0f, 2.0f};
  Routing r = route_topk(Backend{}, logits.data(), 1, 3, 2, true);
  EXPECT_EQ(r.expert_TK, (std::vector<int32_t>{0, 1}));
}

TEST(Dispatcher, PermuteUnpermuteIsIdentityAndGroupsByExpert) {
  Rng rng(11);
  const int64_t T = 13, E = 5, K = 2, D = 3;
  std::vector<float> logits(T * E), x(T * D);
  for (auto& v : logits) v = float(rng.normal());
  for (auto& v : x) v = float(rng.normal());
  // Expert 4 never chosen: make its logit very small.
  for (int64_t t = 0; t < T; ++t) logits[size_t(t * E + 4)] = -100;
  Routing r = route_topk(Backend{}, logits.data(), T, E, K, true);
  TokenDispatcher disp(Backend{}, r, E);
  EXPECT_EQ(disp.rows(), T * K);
  EXPECT_EQ(disp.count(4), 0);
  std::vector<float> xp(size_t(disp.rows() * D));
  disp.permute(x.data(), D, xp.data());
  // rows of expert e are exactly the tokens that chose e
  for (int64_t e = 0; e < E; ++e) {
    std::multiset<std::vector<float>> want, got;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < K; ++k)
        if (r.expert_TK[size_t(t * K + k)] == e) want.insert({x.begin() + t * D, x.begin() + (t + 1) * D});
    for (int64_t i = disp.offset(e); i < disp.offset(e) + disp.count(e); ++i)
      got.insert({xp.begin() + i * D, xp.begin() + (i + 1) * D});
    EXPECT_EQ(want, got) << "expert " << e;
  }
  // with weights summing to w_t per token, unpermute(permute(x)) = w_t * x
  std::vector<float> y(size_t(T * D), 0.0f);
  disp.unpermute_add(xp.data(), D, y.data());
  for (int64_t t = 0; t < T; ++t) {
    float w = r.weight_TK[size_t(t * K)] + r.weight_TK[size_t(t * K + 1)];
    for (int64_t i = 0; i < D; ++i) EXPECT_NEAR(y[size_t(t * D + i)], w * x[size_t(t * D + i)], 1e-6);
  }
}

TEST(Dispatcher, AllTokensToOneExpert) {
  const int64_t T = 4, E = 3;
  Routing r;
  r.T = T, r.K = 1;
  r.expert_TK.assign(T, 2);
  r.weight_TK.assign(T, 1.0f);
  TokenDispatcher disp(Backend{}, r, E);
  EXPECT_EQ(disp.count(0), 0);
  EXPECT_EQ(disp.count(2), T);
  EXPECT_EQ(disp.offset(2), 0);
}

TEST(MoeLayer, GroupedExpertsMatchSequentialPerTokenReference) {
  Rng rng(21);
  ModelConfig c;
  c.hidden_size = 8, c.num_experts = 4, c.moe_router_topk = 2, c.moe_ffn_hidden_size = 6;
  c.moe_router_pre_softmax = false;
  const int64_t T = 7, D = 8, F = 6;
  auto randt = [&](Shape s) {
    Tensor t(std::move(s), DType::F32);
    for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = float(rng.normal() * 0.5);
    return t;
  };
  MoeWeights w;
  w.router = randt({4, D});
  for (int e = 0; e < 4; ++e) w.fc1_E.push_back(randt({2 * F, D})), w.fc2_E.push_back(randt({D, F}));
  std::vector<float> x(T * D), y(T * D);
  for (auto& v : x) v = float(rng.normal());
  Context ctx;
  ctx.local.experts = 4;
  std::vector<int32_t> tokens(T, 0), pos(T), cu = {0, int32_t(T)};
  for (int64_t t = 0; t < T; ++t) pos[size_t(t)] = int32_t(t);
  MoeSaved acts;
  moe_layer_forward(ctx, c, MoeTrainOptions{}, w, x.data(), Batch{tokens, pos, cu, {}, nullptr}, false, acts, y.data());
  // An independent per-token reference in double: y = sum_k w_k fc2(silu(gate) * up).
  auto expert = [&](int e, const float* xt, std::vector<double>& out) {
    const float* w1 = w.fc1_E[size_t(e)].f32();
    const float* w2 = w.fc2_E[size_t(e)].f32();
    std::vector<double> h(F);
    for (int f = 0; f < F; ++f) {
      double g = 0, u = 0;
      for (int i = 0; i < D; ++i) g += double(w1[f * D + i]) * xt[i], u += double(w1[(F + f) * D + i]) * xt[i];
      h[size_t(f)] = g / (1 + std::exp(-g)) * u;
    }
    out.assign(D, 0.0);
    for (int i = 0; i < D; ++i)
      for (int f = 0; f < F; ++f) out[size_t(i)] += double(w2[i * F + f]) * h[size_t(f)];
  };
  std::vector<float> logits(4);
  std::vector<double> one;
  for (int64_t t = 0; t < T; ++t) {
    for (int e = 0; e < 4; ++e) {
      double s = 0;
      for (int i = 0; i < D; ++i) s += w.router.f32()[e * D + i] * x[size_t(t * D + i)];
      logits[size_t(e)] = float(s);
    }
    Routing r = route_topk(Backend{}, logits.data(), 1, 4, 2, false);
    std::vector<double> want(D, 0.0);
    for (int k = 0; k < 2; ++k) {
      expert(r.expert_TK[size_t(k)], x.data() + t * D, one);
      for (int i = 0; i < D; ++i) want[size_t(i)] += r.weight_TK[size_t(k)] * one[size_t(i)];
    }
    for (int i = 0; i < D; ++i) EXPECT_NEAR(y[size_t(t * D + i)], want[size_t(i)], 1e-5);
  }
}
