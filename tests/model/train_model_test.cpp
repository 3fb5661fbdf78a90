// The training engine's options that must not change the maths: every recompute setting gives
// the same loss and gradients as keeping all activations, and evaluate() the same loss as
// forward_backward(). (Gradient values themselves are checked against PyTorch autograd in
// tests/parity/train_parity.py.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <utility>

#include "infer/kv_cache.h"
#include "model/hf_config.h"
#include "model/init_weights.h"
#include "model/train_model.h"
#include "model/transformer.h"
#include "testutil.h"

namespace moe::model {
namespace {

ModelConfig tiny(const std::string& family) {
  const char* src = std::getenv("MOE_SOURCE_DIR");
  return load_hf_config(std::string(src ? src : ".") + "/configs/tiny/" + family);
}

struct Batch {
  std::vector<int32_t> tokens, labels, pos, cu = {0, 7, 19};
  MicroBatchView view() const { return {tokens, labels, pos, cu}; }
};

Batch batch(int64_t V) {
  Batch b;
  for (int t = 0; t < 19; ++t) {
    b.tokens.push_back(int32_t((t * 131 + 7) % V));
    b.labels.push_back(t % 4 == 0 ? -100 : int32_t((t * 31 + 3) % V));
    b.pos.push_back(t < 7 ? t : t - 7);
  }
  return b;
}

StateDict run(const ModelConfig& c, const StateDict& init, TrainOptions o, double* loss) {
  TrainModel m(c, init, std::move(o));
  const Batch b = batch(c.vocab_size);
  const StepStats st = m.forward_backward(b.view(), 1.0f / 13.0f, 1.0f);
  *loss = st.lm_loss_sum;
  EXPECT_DOUBLE_EQ(m.evaluate(b.view()).lm_loss_sum, st.lm_loss_sum);
  return m.grads();
}

TEST(TrainModel, RecomputeDoesNotChangeGradients) {
  for (const char* family : {"qwen2_moe", "qwen3_moe", "llama"}) {
    const ModelConfig c = tiny(family);
    const StateDict init = init_random_state(c, 3, DType::F32, 0.05);
    TrainOptions base;
    base.recompute.granularity = Recompute::kNone;
    base.moe.aux_loss_coeff = 0.01, base.moe.z_loss_coeff = 0.001;
    double ref_loss = 0;
    const StateDict ref = run(c, init, base, &ref_loss);
    std::vector<TrainOptions> variants(4, base);
    variants[0].recompute.granularity = Recompute::kSelective;
    variants[0].recompute.modules = {"core_attn", "moe_act", "layernorm", "moe", "mlp"};
    variants[1].recompute.granularity = Recompute::kFull, variants[1].recompute.num_layers = 2;
    variants[2].recompute.granularity = Recompute::kFull, variants[2].recompute.method = "block";
    variants[3].recompute.granularity = Recompute::kFull, variants[3].recompute.num_layers = c.num_layers;
    for (size_t v = 0; v < variants.size(); ++v) {
      double loss = 0;
      const StateDict g = run(c, init, variants[v], &loss);
      EXPECT_DOUBLE_EQ(loss, ref_loss) << family << " variant " << v;
      for (const auto& [name, t] : ref) {
        const float* a = t.f32();
        const float* b = g.at(name).f32();
        for (int64_t i = 0; i < t.numel(); ++i)
          ASSERT_EQ(a[i], b[i]) << family << " variant " << v << " " << name << "[" << i << "]";
      }
    }
  }
}

TEST(TrainModel, BadOptionsNameTheFlag) {
  const ModelConfig c = tiny("qwen3_moe");
  TrainOptions o;
  o.recompute.modules = {"mla_up_proj"};
  EXPECT_NE(testing::input_error([&] { validate_train_options(o, c); }).find("--recompute_modules"), std::string::npos);
  o = {};
  o.moe.pad_expert_input_to_capacity = true;
  EXPECT_NE(testing::input_error([&] { validate_train_options(o, c); }).find("--moe_expert_capacity_factor"),
            std::string::npos);
}

TEST(TrainModel, PaddingToCapacityKeepsTheResult) {
  const ModelConfig c = tiny("mixtral");
  const StateDict init = init_random_state(c, 5, DType::F32, 0.05);
  TrainOptions a;
  a.moe.capacity_factor = 1.5;
  TrainOptions b = a;
  b.moe.pad_expert_input_to_capacity = true;
  double la = 0, lb = 0;
  const StateDict ga = run(c, init, a, &la), gb = run(c, init, b, &lb);
  EXPECT_NEAR(la, lb, 1e-9 * std::abs(la));
  for (const auto& [name, t] : ga)
    for (int64_t i = 0; i < t.numel(); ++i) ASSERT_NEAR(t.f32()[i], gb.at(name).f32()[i], 1e-6f) << name;
}

}  // namespace
}  // namespace moe::model

namespace moe::model {
namespace {

// Issue 12: the aux-loss-free expert bias routes inference as it routes training. A bias large
// enough to change the selection makes a bias-blind inference disagree with training's loss.
TEST(TrainModel, ExpertBiasRoutesInferenceAsTraining) {
  for (const char* family : {"qwen3_moe", "mixtral"}) {
    ModelConfig c = tiny(family);
    c.moe_router_enable_expert_bias = true;
    StateDict init = init_random_state(c, 5, DType::F32, 0.05);
    for (int i = 0; i < c.num_layers; ++i)
      if (c.is_moe_layer(i)) {
        float* b = init.at(names::layer(i) + names::kExpertBias).f32();
        for (int e = 0; e < c.num_experts; ++e) b[e] = e % 2 ? 0.5f : -0.5f;  // flips many choices
      }
    TrainModel tm(c, init, {});
    Batch b = batch(c.vocab_size);
    b.cu = {0, 19};
    for (int t = 0; t < 19; ++t) b.pos[size_t(t)] = t;
    const double train_loss = tm.evaluate(b.view()).lm_loss_sum;

    auto infer_loss = [&](const ModelConfig& cfg, const StateDict& state) {
      Transformer model(cfg, state);
      moe::infer::KvCache cache(model.config());
      std::vector<float> logits(size_t(19 * cfg.vocab_size));
      model.forward(b.tokens, cache, logits.data(), true);
      double sum = 0;
      for (int t = 0; t < 19; ++t) {
        if (b.labels[size_t(t)] < 0) continue;
        const float* l = logits.data() + int64_t(t) * cfg.vocab_size;
        double m = l[0], s = 0;
        for (int v = 0; v < cfg.vocab_size; ++v) m = std::max(m, double(l[v]));
        for (int v = 0; v < cfg.vocab_size; ++v) s += std::exp(double(l[v]) - m);
        sum += m + std::log(s) - l[b.labels[size_t(t)]];
      }
      return sum;
    };
    const double with_bias = infer_loss(c, init);
    EXPECT_NEAR(with_bias, train_loss, 1e-5 * std::abs(train_loss)) << family;
    // The same model read without its bias routes differently: the check above has teeth.
    ModelConfig blind = c;
    blind.moe_router_enable_expert_bias = false;
    StateDict no_bias;
    for (const auto& [n, t] : init)
      if (n.find(names::kExpertBias) == std::string::npos) no_bias[n] = t;
    EXPECT_GT(std::abs(infer_loss(blind, no_bias) - train_loss), 1e-4 * std::abs(train_loss)) << family;
  }
}

}  // namespace
}  // namespace moe::model

namespace moe::model {
namespace {

// Issue 12, one forward proven: inference (Transformer over a KV cache) and the training forward
// (TrainModel) run the same module code, so on the same tokens in fp32 their logits are equal bit
// for bit, for every family.
TEST(OneForward, InferenceLogitsEqualTrainingLogitsBitwise) {
  const char* src = std::getenv("MOE_SOURCE_DIR");
  const std::string dir = std::string(src ? src : ".") + "/configs/tiny";
  int families = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string family = entry.path().filename().string();
    const ModelConfig c = tiny(family);
    const StateDict init = init_random_state(c, 7, DType::F32, 0.05);
    const int64_t T = 23, V = c.vocab_size;
    std::vector<int32_t> tokens, labels, pos, cu = {0, int32_t(T)};
    for (int t = 0; t < T; ++t) {
      tokens.push_back(int32_t((t * 131 + 7) % V));
      labels.push_back(int32_t((t * 31 + 3) % V));  // every position labelled: the head sees every row
      pos.push_back(t);
    }
    TrainModel tm(c, init, {});
    std::vector<float> train_logits(size_t(T * V)), infer_logits(size_t(T * V));
    tm.evaluate({tokens, labels, pos, cu}, train_logits.data());
    Transformer model(c, init);
    moe::infer::KvCache cache(model.config());
    model.forward(tokens, cache, infer_logits.data(), true);
    EXPECT_EQ(0, std::memcmp(train_logits.data(), infer_logits.data(), train_logits.size() * sizeof(float))) << family;
    ++families;
  }
  EXPECT_GE(families, 6);
}

}  // namespace
}  // namespace moe::model

namespace moe::model {
namespace {

// Issue 12, flat buffers: every parameter and its gradient are views into one buffer each, laid
// out back to back in WeightMap order, so gradient bucketing and a distributed optimizer can
// slice them by ranges.
TEST(TrainModel, ParametersAndGradientsAreViewsOfOneFlatBufferEach) {
  const ModelConfig c = tiny("qwen2_moe");
  TrainModel tm(c, init_random_state(c, 9, DType::F32, 0.05), {});
  const auto flat_p = tm.flat_params(), flat_g = tm.flat_grads();
  size_t total = 0;
  for (const auto& [name, t] : tm.params()) {
    const float* p = t.f32();
    const float* g = tm.grads().at(name).f32();
    ASSERT_TRUE(p >= flat_p.data() && p + t.numel() <= flat_p.data() + flat_p.size()) << name;
    EXPECT_EQ(p - flat_p.data(), g - flat_g.data()) << name;  // the same offset in both buffers
    // The experts form the second region, reduced over the expert-data-parallel group.
    const bool expert = name.find(".mlp.experts.") != std::string::npos;
    EXPECT_EQ(expert, size_t(p - flat_p.data()) >= tm.expert_offset()) << name;
    total += size_t(t.numel());
  }
  EXPECT_EQ(total, flat_p.size());  // no gaps, no overlaps: the views tile the buffer
  flat_g[0] = 1.0f;
  tm.zero_grad();
  EXPECT_EQ(flat_g[0], 0.0f);
}

}  // namespace
}  // namespace moe::model
