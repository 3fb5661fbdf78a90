// AdamW / SGD against torch.optim (run live with /usr/bin/python3 when torch is there), grad
// clipping, and Megatron's LR schedule at its key points.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "testutil.h"
#include "train/lr_schedule.h"
#include "train/optimizer.h"

namespace moe::train {
namespace {

bool have_torch() { return std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0; }

// Runs `steps` steps of torch.optim on the same fixed parameters/gradients; returns the params.
std::vector<float> torch_reference(const std::string& optim, int steps, const std::vector<float>& p0,
                                   const std::vector<std::vector<float>>& grads, float lr) {
  std::ostringstream py;
  py << "import torch\np=torch.nn.Parameter(torch.tensor([";
  for (float v : p0) py << v << ",";
  py << "]))\ng=[";
  for (const auto& g : grads) {
    py << "[";
    for (float v : g) py << v << ",";
    py << "],";
  }
  py << "]\n";
  if (optim == "adam") py << "o=torch.optim.AdamW([p],lr=" << lr << ",betas=(0.9,0.95),eps=1e-8,weight_decay=0.1)\n";
  else py << "o=torch.optim.SGD([p],lr=" << lr << ",momentum=0.9,weight_decay=0.1)\n";
  py << "for s in range(" << steps << "):\n  p.grad=torch.tensor(g[s]);o.step()\n"
     << "print(' '.join('%.9g'%v for v in p.detach().tolist()))\n";
  testing::TempDir dir;
  testing::write_file(dir.file("ref.py"), py.str());
  FILE* f = popen(("/usr/bin/python3 " + dir.file("ref.py")).c_str(), "r");
  std::vector<float> out;
  float v;
  while (f && std::fscanf(f, "%f", &v) == 1) out.push_back(v);
  if (f) pclose(f);
  return out;
}

void check_against_torch(const std::string& type) {
  if (!have_torch()) GTEST_SKIP() << "/usr/bin/python3 with torch not available";
  std::vector<float> p = {0.5f, -1.25f, 2.0f, 0.0f, 3.5f, -0.75f};
  const std::vector<float> p0 = p;
  std::vector<std::vector<float>> grads;
  for (int s = 0; s < 5; ++s) {
    grads.emplace_back();
    for (size_t i = 0; i < p.size(); ++i) grads.back().push_back(std::sin(float(s * 7 + i)) * (1.0f + float(i)));
  }
  OptimizerConfig cfg;
  cfg.type = type, cfg.sgd_momentum = 0.9f;
  Optimizer opt(cfg);
  std::vector<float> g(p.size());
  ParamRef ref{"w", p.data(), g.data(), p.size(), true};
  for (const auto& gs : grads) {
    g = gs;
    ref.grad = g.data();
    opt.step({&ref, 1}, 0.01f);
  }
  const auto want = torch_reference(type, 5, p0, grads, 0.01f);
  ASSERT_EQ(want.size(), p.size());
  for (size_t i = 0; i < p.size(); ++i) EXPECT_NEAR(p[i], want[i], 1e-6f) << type << " element " << i;
}

TEST(Optimizer, AdamWMatchesTorch) { check_against_torch("adam"); }
TEST(Optimizer, SgdMomentumMatchesTorch) { check_against_torch("sgd"); }

// 10 AdamW steps with clipping at 1.0 and a warmup + cosine schedule, one decayed and one
// non-decayed parameter, against torch.optim.AdamW with torch's clip_grad_norm_ and the schedule
// written again in Python from Megatron's formula.
TEST(Optimizer, AdamWWithClippingAndScheduleMatchesTorch) {
  if (!have_torch()) GTEST_SKIP() << "/usr/bin/python3 with torch not available";
  const int steps = 10, n = 8;
  std::vector<float> w(n), b(n), gw(n), gb(n);
  for (int i = 0; i < n; ++i) w[size_t(i)] = std::cos(float(i)), b[size_t(i)] = 0.1f * float(i);
  auto grad = [](int s, int i, int which) { return (which ? 0.3f : 2.0f) * std::sin(float(s * 13 + i * 3 + which)); };
  LrScheduleConfig lc;
  lc.lr = 1e-2, lc.min_lr = 1e-3, lc.warmup_iters = 3, lc.style = "cosine";
  LrSchedule sched(lc, steps);
  Optimizer opt(OptimizerConfig{});
  ParamRef refs[] = {{"w", w.data(), gw.data(), size_t(n), true}, {"b.bias", b.data(), gb.data(), size_t(n), false}};
  for (int s = 0; s < steps; ++s) {
    for (int i = 0; i < n; ++i) gw[size_t(i)] = grad(s, i, 0), gb[size_t(i)] = grad(s, i, 1);
    clip_grad_norm(refs, 1.0);
    opt.step(refs, float(sched.lr_at(s + 1)));
  }
  std::ostringstream py;
  py << "import math, torch\nn=" << n << "\n"
     << "w=torch.nn.Parameter(torch.tensor([math.cos(i) for i in range(n)],dtype=torch.float32))\n"
     << "b=torch.nn.Parameter(torch.tensor([0.1*i for i in range(n)],dtype=torch.float32))\n"
     << "o=torch.optim.AdamW([{'params':[w],'weight_decay':0.1},{'params':[b],'weight_decay':0.0}],lr=1e-2,"
        "betas=(0.9,0.95),eps=1e-8)\n"
     << "def lr(s):\n  if s<=3: return 1e-2*s/3\n  r=(s-3)/(10-3)\n  return 1e-3+0.5*(math.cos(math.pi*r)+1)*(1e-2-1e-3)\n"
     << "for s in range(10):\n"
     << "  w.grad=torch.tensor([2.0*math.sin(s*13+i*3) for i in range(n)],dtype=torch.float32)\n"
     << "  b.grad=torch.tensor([0.3*math.sin(s*13+i*3+1) for i in range(n)],dtype=torch.float32)\n"
     << "  torch.nn.utils.clip_grad_norm_([w,b],1.0)\n"
     << "  for g in o.param_groups: g['lr']=lr(s+1)\n"
     << "  o.step()\n"
     << "print(' '.join('%.9g'%v for v in w.tolist()+b.tolist()))\n";
  testing::TempDir dir;
  testing::write_file(dir.file("ref.py"), py.str());
  FILE* f = popen(("/usr/bin/python3 " + dir.file("ref.py")).c_str(), "r");
  std::vector<double> want;
  double v;
  while (f && std::fscanf(f, "%lf", &v) == 1) want.push_back(v);
  if (f) pclose(f);
  ASSERT_EQ(want.size(), size_t(2 * n));
  double num = 0, den = 0;
  for (int i = 0; i < n; ++i) {
    num += std::pow(w[size_t(i)] - want[size_t(i)], 2) + std::pow(b[size_t(i)] - want[size_t(n + i)], 2);
    den += std::pow(want[size_t(i)], 2) + std::pow(want[size_t(n + i)], 2);
  }
  EXPECT_LT(std::sqrt(num / den), 1e-5);
}

TEST(Optimizer, NoDecayForNormsAndBiases) {
  EXPECT_FALSE(decays("decoder.layers.0.self_attention.linear_qkv.layer_norm_weight"));
  EXPECT_FALSE(decays("decoder.final_layernorm.weight"));
  EXPECT_FALSE(decays("decoder.layers.0.self_attention.linear_qkv.bias"));
  EXPECT_TRUE(decays("decoder.layers.0.mlp.experts.linear_fc1.weight3"));
  EXPECT_TRUE(decays("embedding.word_embeddings.weight"));
}

TEST(Optimizer, ClipByGlobalNorm) {
  std::vector<float> a = {3, 0}, b = {0, 4}, pa(2), pb(2);
  ParamRef refs[] = {{"a", pa.data(), a.data(), 2, true}, {"b", pb.data(), b.data(), 2, true}};
  EXPECT_DOUBLE_EQ(clip_grad_norm(refs, 1.0), 5.0);
  EXPECT_NEAR(a[0], 0.6f, 1e-6);
  EXPECT_NEAR(b[1], 0.8f, 1e-6);
  std::vector<float> n = {NAN, 1};
  ParamRef bad{"n", pa.data(), n.data(), 2, true};
  EXPECT_FALSE(std::isfinite(clip_grad_norm({&bad, 1}, 1.0)));
  EXPECT_TRUE(std::isnan(n[0]) && n[1] == 1.0f);  // untouched: the caller skips the step
}

TEST(LrSchedule, WarmupThenCosineToMin) {
  LrScheduleConfig c;
  c.lr = 1e-3, c.min_lr = 1e-4, c.warmup_iters = 10, c.style = "cosine";
  LrSchedule s(c, 110);
  EXPECT_DOUBLE_EQ(s.lr_at(0), 0.0);
  EXPECT_DOUBLE_EQ(s.lr_at(5), 5e-4);
  EXPECT_DOUBLE_EQ(s.lr_at(10), 1e-3);
  EXPECT_NEAR(s.lr_at(60), 1e-4 + 0.5 * 9e-4, 1e-12);  // halfway through the decay
  EXPECT_NEAR(s.lr_at(110), 1e-4, 1e-12);
  EXPECT_DOUBLE_EQ(s.lr_at(500), 1e-4);
}

TEST(LrSchedule, LinearConstantAndFraction) {
  LrScheduleConfig c;
  c.lr = 2.0, c.style = "linear", c.warmup_fraction = 0.1;
  LrSchedule s(c, 100);
  EXPECT_EQ(s.warmup_iters(), 10);
  EXPECT_NEAR(s.lr_at(55), 1.0, 1e-12);
  c.style = "constant", c.warmup_fraction = 0;
  EXPECT_DOUBLE_EQ(LrSchedule(c, 100).lr_at(99), 2.0);
}

TEST(LrSchedule, BadSettingsNameTheFlag) {
  LrScheduleConfig c;
  c.min_lr = 1.0;
  EXPECT_NE(testing::input_error([&] { LrSchedule(c, 10); }).find("--min_lr"), std::string::npos);
  c = {};
  c.warmup_iters = 20;
  EXPECT_NE(testing::input_error([&] { LrSchedule(c, 10); }).find("--lr_warmup_iters"), std::string::npos);
  c = {};
  c.style = "step";
  EXPECT_NE(testing::input_error([&] { LrSchedule(c, 10); }).find("--lr_decay_style"), std::string::npos);
}

}  // namespace
}  // namespace moe::train
