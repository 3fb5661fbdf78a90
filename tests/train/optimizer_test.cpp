// AdamW / SGD and gradient clipping against torch.optim and torch.nn.utils.clip_grad_norm_,
// run live through tests/train/torch_optim_reference.py with /usr/bin/python3 (Debian's
// python3-torch; skipped with the reason when it is missing); state save/restore, decay rules.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>

#include <nlohmann/json.hpp>

#include "testutil.h"
#include "train/lr_schedule.h"
#include "train/optimizer.h"

namespace moe::train {
namespace {

using nlohmann::json;

bool have_torch() { return std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0; }

std::string reference_script() {
  const char* src = std::getenv("MOE_SOURCE_DIR");
  const std::filesystem::path dir =
      src ? std::filesystem::path(src) / "tests" / "train" : std::filesystem::path(__FILE__).parent_path();
  return (dir / "torch_optim_reference.py").string();
}

json run_reference(const json& spec) {
  testing::TempDir dir;
  testing::write_file(dir.file("spec.json"), spec.dump());
  const std::string cmd = "/usr/bin/python3 " + reference_script() + " < " + dir.file("spec.json");
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) return json();
  std::string out;
  char buf[1 << 16];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) out.append(buf, n);
  pclose(f);
  return json::parse(out, nullptr, false);
}

struct Case {
  OptimizerConfig cfg;
  std::vector<size_t> sizes;  // one parameter per entry
  std::vector<bool> decay;
  int steps = 10;
  double clip = 1.0;
  double grad_scale = 1.0;
  LrScheduleConfig lr;
};

struct Errors {
  double rel_l2 = 0, max_abs = 0, norm_rel = 0;
};

// Runs the same steps here and in torch; returns the relative L2 and max abs error of the final
// parameters and the largest relative error of the pre-clip grad norms.
Errors compare_with_torch(const Case& c) {
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const size_t np = c.sizes.size();
  std::vector<std::vector<float>> w(np), g(np);
  json spec = {{"optimizer", c.cfg.type},
               {"betas", {double(c.cfg.beta1), double(c.cfg.beta2)}},
               {"eps", double(c.cfg.eps)},
               {"momentum", double(c.cfg.sgd_momentum)},
               {"clip", c.clip}};
  for (size_t p = 0; p < np; ++p) {
    w[p].resize(c.sizes[p]), g[p].resize(c.sizes[p]);
    for (float& v : w[p]) v = nd(rng);
    spec["params"].push_back({{"data", w[p]}, {"weight_decay", c.decay[p] ? double(c.cfg.weight_decay) : 0.0}});
  }
  std::vector<ParamRef> refs;
  for (size_t p = 0; p < np; ++p)
    refs.push_back({"p" + std::to_string(p), w[p].data(), g[p].data(), c.sizes[p], bool(c.decay[p])});
  LrSchedule sched(c.lr, c.steps);
  Optimizer opt(c.cfg);
  std::vector<double> norms;
  for (int s = 0; s < c.steps; ++s) {
    json step_grads = json::array();
    for (size_t p = 0; p < np; ++p) {
      for (float& v : g[p]) v = float(c.grad_scale) * nd(rng);
      step_grads.push_back(g[p]);
    }
    spec["grads"].push_back(step_grads);
    const double lr = sched.lr_at(s + 1);  // skip the zero-lr first warmup step so every step moves
    spec["lrs"].push_back(lr);
    norms.push_back(clip_grad_norm(refs, c.clip));
    opt.step(refs, lr);
  }
  const json want = run_reference(spec);
  EXPECT_TRUE(want.is_object()) << "reference script failed";
  Errors e;
  if (!want.is_object()) return e;
  double num = 0, den = 0;
  for (size_t p = 0; p < np; ++p) {
    const auto ref = want["params"][p].get<std::vector<double>>();
    EXPECT_EQ(ref.size(), w[p].size());
    for (size_t i = 0; i < std::min(ref.size(), w[p].size()); ++i) {
      const double d = double(w[p][i]) - ref[i];
      num += d * d, den += ref[i] * ref[i];
      e.max_abs = std::max(e.max_abs, std::fabs(d));
    }
  }
  e.rel_l2 = std::sqrt(num / den);
  const auto ref_norms = want["grad_norms"].get<std::vector<double>>();
  for (size_t s = 0; s < norms.size(); ++s) e.norm_rel = std::max(e.norm_rel, std::fabs(norms[s] / ref_norms[s] - 1));
  return e;
}

LrScheduleConfig warmup_cosine() {
  LrScheduleConfig lr;
  lr.lr = 1e-2, lr.min_lr = 1e-3, lr.warmup_iters = 3, lr.style = "cosine";
  return lr;
}

// The check: 10 AdamW steps with clipping and warmup + cosine, a decayed parameter
// spanning several work blocks and a non-decayed one (a bias), within 1e-5 relative.
TEST(Optimizer, AdamWWithClippingAndWarmupCosineMatchesTorch) {
  if (!have_torch()) GTEST_SKIP() << "/usr/bin/python3 with torch (Debian python3-torch) not available";
  Case c;
  c.sizes = {70001, 37}, c.decay = {true, false}, c.lr = warmup_cosine();
  c.grad_scale = 0.01;  // global norm ~2.6: clipped on every step
  const Errors e = compare_with_torch(c);
  std::printf("AdamW vs torch: rel L2 %.3g, max abs %.3g, grad norm rel %.3g\n", e.rel_l2, e.max_abs, e.norm_rel);
  EXPECT_LT(e.rel_l2, 1e-5);
  EXPECT_LT(e.max_abs, 1e-5);
  EXPECT_LT(e.norm_rel, 1e-5);
}

TEST(Optimizer, AdamWUnclippedNonDefaultBetasMatchesTorch) {
  if (!have_torch()) GTEST_SKIP() << "/usr/bin/python3 with torch (Debian python3-torch) not available";
  Case c;
  c.cfg.beta1 = 0.8f, c.cfg.beta2 = 0.999f, c.cfg.eps = 1e-6f, c.cfg.weight_decay = 0.3f;
  c.sizes = {513, 1, 64}, c.decay = {true, false, true}, c.clip = 0, c.grad_scale = 3.0;
  c.lr.lr = 3e-3, c.lr.style = "linear";
  const Errors e = compare_with_torch(c);
  std::printf("AdamW (unclipped) vs torch: rel L2 %.3g, max abs %.3g\n", e.rel_l2, e.max_abs);
  EXPECT_LT(e.rel_l2, 1e-5);
  EXPECT_LT(e.max_abs, 1e-5);
}

TEST(Optimizer, SgdMomentumMatchesTorch) {
  if (!have_torch()) GTEST_SKIP() << "/usr/bin/python3 with torch (Debian python3-torch) not available";
  Case c;
  c.cfg.type = "sgd", c.cfg.sgd_momentum = 0.9f;
  c.sizes = {1000, 16}, c.decay = {true, false}, c.lr = warmup_cosine(), c.lr.lr = 0.1;
  const Errors e = compare_with_torch(c);
  std::printf("SGD momentum vs torch: rel L2 %.3g, max abs %.3g\n", e.rel_l2, e.max_abs);
  EXPECT_LT(e.rel_l2, 1e-6);
  EXPECT_LT(e.max_abs, 1e-5);
}

TEST(Optimizer, PlainSgdMatchesTorch) {
  if (!have_torch()) GTEST_SKIP() << "/usr/bin/python3 with torch (Debian python3-torch) not available";
  Case c;
  c.cfg.type = "sgd", c.sizes = {300}, c.decay = {true}, c.steps = 4, c.clip = 0.5;
  c.lr.lr = 0.05, c.lr.style = "constant";
  const Errors e = compare_with_torch(c);
  EXPECT_LT(e.rel_l2, 1e-6);
}

// A single AdamW step by hand: with bias correction the first update is lr * g / (|g| + eps')
// = lr * sign(g) (plus decoupled decay), whatever the betas.
TEST(Optimizer, FirstAdamWStepIsSignTimesLr) {
  std::vector<float> w = {1.0f, -2.0f, 0.5f}, g = {0.3f, -4.0f, 0.0f};
  OptimizerConfig cfg;
  cfg.weight_decay = 0.5f;
  Optimizer opt(cfg);
  ParamRef p{"w", w.data(), g.data(), 3, true};
  opt.step({&p, 1}, 0.1);
  EXPECT_NEAR(w[0], 1.0f * (1 - 0.05f) - 0.1f, 1e-6);
  EXPECT_NEAR(w[1], -2.0f * (1 - 0.05f) + 0.1f, 1e-6);
  EXPECT_NEAR(w[2], 0.5f * (1 - 0.05f), 1e-6);  // zero gradient: only the decay
  EXPECT_EQ(opt.steps(), 1);
  EXPECT_NEAR(opt.state("w", "exp_avg")[1], -0.4f, 1e-6);
  EXPECT_NEAR(opt.state("w", "exp_avg_sq")[1], 0.05f * 16.0f, 1e-5);
}

TEST(Optimizer, NoDecayParametersKeepTheirValueUnderZeroGrad) {
  std::vector<float> w = {1.0f, 2.0f}, g = {0.0f, 0.0f};
  Optimizer opt(OptimizerConfig{});
  ParamRef p{"decoder.final_layernorm.weight", w.data(), g.data(), 2, false};
  for (int i = 0; i < 3; ++i) opt.step({&p, 1}, 1.0);
  EXPECT_EQ(w[0], 1.0f);
  EXPECT_EQ(w[1], 2.0f);
}

// Saving the state after 3 steps and restoring it into a fresh optimizer continues bitwise as if
// never interrupted: what resume relies on.
TEST(Optimizer, StateRestoreContinuesBitwise) {
  for (const std::string type : {"adam", "sgd"}) {
    OptimizerConfig cfg;
    cfg.type = type, cfg.sgd_momentum = 0.9f;
    auto grads = [](int s, std::vector<float>& g) {
      for (size_t i = 0; i < g.size(); ++i) g[i] = std::sin(float(s * 31 + int(i)));
    };
    std::vector<float> a(100, 0.5f), ga(100), b(100, 0.5f), gb(100);
    ParamRef pa{"x", a.data(), ga.data(), 100, true}, pb{"x", b.data(), gb.data(), 100, true};
    Optimizer straight(cfg), first(cfg);
    for (int s = 0; s < 5; ++s) grads(s, ga), straight.step({&pa, 1}, 0.01);
    for (int s = 0; s < 3; ++s) grads(s, gb), first.step({&pb, 1}, 0.01);
    std::vector<std::vector<float>> saved;
    for (const StateRef& r : first.state_refs({&pb, 1})) saved.emplace_back(r.data.begin(), r.data.end());
    Optimizer resumed(cfg);
    resumed.set_steps(first.steps());
    const auto refs = resumed.state_refs({&pb, 1});
    ASSERT_EQ(refs.size(), saved.size());
    ASSERT_EQ(refs.size(), type == "adam" ? 2u : 1u);
    EXPECT_EQ(refs[0].key, type == "adam" ? "exp_avg" : "momentum_buffer");
    for (size_t i = 0; i < refs.size(); ++i) {
      EXPECT_EQ(refs[i].param, "x");
      ASSERT_EQ(refs[i].data.size(), 100u);
      std::copy(saved[i].begin(), saved[i].end(), refs[i].data.begin());
    }
    for (int s = 3; s < 5; ++s) grads(s, gb), resumed.step({&pb, 1}, 0.01);
    for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << type << " element " << i;
  }
}

TEST(Optimizer, ResetForgetsStateAndSteps) {
  std::vector<float> w(4, 1.0f), g(4, 1.0f);
  ParamRef p{"w", w.data(), g.data(), 4, true};
  Optimizer opt(OptimizerConfig{});
  opt.step({&p, 1}, 0.1);
  opt.reset();
  EXPECT_EQ(opt.steps(), 0);
  EXPECT_FALSE(opt.bound());
  EXPECT_FALSE(opt.has_state());
  EXPECT_TRUE(opt.flat_state("exp_avg").empty());
  EXPECT_TRUE(Optimizer(OptimizerConfig{.type = "sgd"}).state_keys().empty());  // no momentum: no state
}

TEST(Optimizer, MismatchedRestoredStateIsAnInternalError) {
  std::vector<float> w(4), g(4);
  ParamRef p{"w", w.data(), g.data(), 4, true};
  Optimizer opt(OptimizerConfig{});
  ParamRef restored{"w", w.data(), g.data(), 3, true};  // the state a checkpoint held: 3 values
  opt.bind({&restored, 1});
  EXPECT_THROW(opt.step({&p, 1}, 0.1), InternalError);
}

// Each state key is one flat buffer in bind order, a view per parameter; stepping the same
// parameters in another order finds them by name and updates them bitwise as in bind order.
TEST(Optimizer, StateIsOneFlatBufferPerKeyInBindOrder) {
  std::vector<float> flat_w(7), flat_g(7);
  for (size_t i = 0; i < 7; ++i) flat_w[i] = 0.1f * float(i) - 0.3f, flat_g[i] = std::cos(float(i));
  std::vector<float> w2 = flat_w, g2 = flat_g;
  ParamRef a{"a", flat_w.data(), flat_g.data(), 3, true}, b{"b", flat_w.data() + 3, flat_g.data() + 3, 4, false};
  ParamRef a2{"a", w2.data(), g2.data(), 3, true}, b2{"b", w2.data() + 3, g2.data() + 3, 4, false};
  const ParamRef by_name[] = {b, a}, flat[] = {a2, b2};
  EXPECT_EQ(in_address_order(by_name)[0].name, "a");
  Optimizer x(OptimizerConfig{}), y(OptimizerConfig{});
  x.bind(in_address_order(by_name));
  EXPECT_TRUE(x.bound());
  EXPECT_FALSE(x.has_state());  // allocated on first need
  for (int s = 0; s < 3; ++s) {
    ASSERT_TRUE(x.step(by_name, 1e-2));
    ASSERT_TRUE(y.step(flat, 1e-2));
  }
  EXPECT_EQ(flat_w, w2);
  for (const auto& k : x.state_keys()) {
    const auto fx = x.flat_state(k), fy = y.flat_state(k);
    ASSERT_EQ(fx.size(), 7u);
    EXPECT_TRUE(std::equal(fx.begin(), fx.end(), fy.begin(), fy.end())) << k;
    EXPECT_EQ(x.state("a", k).data(), fx.data()) << k;
    EXPECT_EQ(x.state("b", k).data(), fx.data() + 3) << k;
    EXPECT_EQ(x.state("b", k).size(), 4u) << k;
  }
  EXPECT_THROW(x.bind(by_name), InternalError);  // another order: reset() first
  EXPECT_THROW(x.state("c", "exp_avg"), InternalError);
  EXPECT_THROW(x.state("a", "momentum_buffer"), InternalError);
}

TEST(Optimizer, BadConfigNamesTheFlag) {
  auto err = [](OptimizerConfig c) { return testing::input_error([&] { Optimizer o(c); }); };
  EXPECT_NE(err({.type = "lion"}).find("--optimizer"), std::string::npos);
  EXPECT_NE(err({.beta1 = 1.0f}).find("--adam_beta1"), std::string::npos);
  EXPECT_NE(err({.beta2 = -0.1f}).find("--adam_beta2"), std::string::npos);
  EXPECT_NE(err({.eps = -1.0f}).find("--adam_eps"), std::string::npos);
  EXPECT_NE(err({.weight_decay = NAN}).find("--weight_decay"), std::string::npos);
  EXPECT_NE(err({.sgd_momentum = -1.0f}).find("--sgd_momentum"), std::string::npos);
}

TEST(Optimizer, NoDecayForNormsAndBiases) {
  EXPECT_FALSE(decays("decoder.layers.0.self_attention.linear_qkv.layer_norm_weight"));
  EXPECT_FALSE(decays("decoder.layers.0.self_attention.q_layernorm.weight"));
  EXPECT_FALSE(decays("decoder.final_layernorm.weight"));
  EXPECT_FALSE(decays("decoder.layers.0.self_attention.linear_qkv.bias"));
  EXPECT_FALSE(decays("decoder.layers.0.mlp.router.expert_bias"));
  EXPECT_TRUE(decays("decoder.layers.0.mlp.experts.linear_fc1.weight3"));
  EXPECT_TRUE(decays("embedding.word_embeddings.weight"));
  EXPECT_TRUE(decays("decoder.layers.0.mlp.router.weight", 2));
  EXPECT_FALSE(decays("decoder.layers.0.mlp.shared_experts.gate_weight", 1));  // 1-D
}

TEST(ClipGradNorm, ScalesByGlobalNorm) {
  std::vector<float> a = {3, 0}, b = {0, 4}, pa(2), pb(2);
  ParamRef refs[] = {{"a", pa.data(), a.data(), 2, true}, {"b", pb.data(), b.data(), 2, true}};
  EXPECT_DOUBLE_EQ(clip_grad_norm(refs, 1.0), 5.0);
  EXPECT_NEAR(a[0], 3.0 / (5.0 + 1e-6), 1e-7);
  EXPECT_NEAR(b[1], 4.0 / (5.0 + 1e-6), 1e-7);
  EXPECT_NEAR(clip_grad_norm(refs, 1.0), 1.0, 1e-6);  // now at the limit: returned, not rescaled
}

TEST(ClipGradNorm, UnderTheLimitOrDisabledLeavesGradients) {
  std::vector<float> a = {0.3f, 0.4f}, p(2);
  ParamRef r{"a", p.data(), a.data(), 2, true};
  EXPECT_NEAR(clip_grad_norm({&r, 1}, 1.0), 0.5, 1e-7);
  EXPECT_EQ(a[0], 0.3f);
  a = {30, 40};
  EXPECT_NEAR(clip_grad_norm({&r, 1}, 0.0), 50.0, 1e-9);  // max_norm <= 0: off
  EXPECT_EQ(a[1], 40.0f);
}

TEST(ClipGradNorm, NonFiniteIsReportedAndGradientsUntouched) {
  std::vector<float> p(3), n = {NAN, 1, 2}, inf = {1, INFINITY, 2};
  ParamRef bad{"n", p.data(), n.data(), 3, true}, big{"i", p.data(), inf.data(), 3, true};
  const double a = clip_grad_norm({&bad, 1}, 1.0), b = clip_grad_norm({&big, 1}, 1.0);
  EXPECT_FALSE(grad_norm_ok(a));
  EXPECT_FALSE(grad_norm_ok(b));
  EXPECT_TRUE(grad_norm_ok(2.0));
  EXPECT_TRUE(std::isnan(n[0]) && n[1] == 1.0f && n[2] == 2.0f);  // the caller skips the step
  EXPECT_EQ(inf[2], 2.0f);
}

// Large and many-parameter inputs: the norm is accumulated in double (an fp32 running sum of
// 3M squares of 1 would drift) and does not depend on how parameters are split.
TEST(ClipGradNorm, DoubleAccumulationOverManyBlocks) {
  std::vector<float> big(3'000'000, 1.0f), pbig(big.size()), small(7, 1.0f), psmall(7);
  ParamRef refs[] = {{"big", pbig.data(), big.data(), big.size(), true}, {"s", psmall.data(), small.data(), 7, true}};
  EXPECT_DOUBLE_EQ(clip_grad_norm(refs, 0), std::sqrt(3'000'007.0));
  std::vector<ParamRef> split;
  for (size_t b = 0; b < big.size(); b += 1'000'000)
    split.push_back({"part", pbig.data() + b, big.data() + b, 1'000'000, true});
  split.push_back(refs[1]);
  EXPECT_DOUBLE_EQ(clip_grad_norm(split, 0), std::sqrt(3'000'007.0));
}

}  // namespace
}  // namespace moe::train

namespace moe::train {
namespace {

// QA #10: a step whose update would make a weight (or a moment) non-finite changes nothing and
// reports false; the next sane step goes on from the untouched state.
TEST(Optimizer, QA10_OverflowingStepIsSkippedAndChangesNothing) {
  for (const char* type : {"adam", "sgd"}) {
    OptimizerConfig c;
    c.type = type, c.sgd_momentum = 0.5f;
    Optimizer opt(c);
    std::vector<float> w = {1.0f, -2.0f, 3.0f}, g = {0.5f, 0.25f, -1.0f};
    ParamRef p{"w", w.data(), g.data(), w.size(), true};
    ASSERT_TRUE(opt.step({&p, 1}, 1e-3, 2.0));
    const auto w1 = w;
    auto state = [&] {
      std::vector<std::vector<float>> s;
      for (const auto& k : opt.state_keys()) s.emplace_back(opt.flat_state(k).begin(), opt.flat_state(k).end());
      return s;
    };
    const auto state1 = state();
    ASSERT_EQ(state1.size(), std::string(type) == "adam" ? 2u : 1u);
    EXPECT_FALSE(opt.step({&p, 1}, 1e39, 2.0)) << type;
    EXPECT_EQ(w, w1) << type;
    EXPECT_EQ(state(), state1) << type;
    EXPECT_EQ(opt.steps(), 1) << type;
    g = {1e20f, 0.0f, 0.0f};  // (1 - beta2) g^2 overflows the second moment
    if (std::string(type) == "adam") {
      EXPECT_FALSE(opt.step({&p, 1}, 1e-3)) << type;
    }
    g = {0.5f, 0.25f, -1.0f};
    EXPECT_TRUE(opt.step({&p, 1}, 1e-3, 2.0)) << type;
    for (float x : w) EXPECT_TRUE(std::isfinite(x));
  }
}

// The bound is only a shortcut: with or without the gradient bound the weights are the same bits.
TEST(Optimizer, GradientBoundDoesNotChangeTheUpdate) {
  std::vector<float> wa(1000), wb, g(1000);
  for (size_t i = 0; i < wa.size(); ++i) wa[i] = float(std::sin(double(i))), g[i] = float(std::cos(3.0 * double(i)));
  wb = wa;
  Optimizer a({}), b({});
  ParamRef pa{"w", wa.data(), g.data(), wa.size(), true}, pb{"w", wb.data(), g.data(), wb.size(), true};
  for (int s = 0; s < 5; ++s) {
    ASSERT_TRUE(a.step({&pa, 1}, 1e-2, 40.0));
    ASSERT_TRUE(b.step({&pb, 1}, 1e-2));
  }
  EXPECT_EQ(wa, wb);
}

}  // namespace
}  // namespace moe::train
