// Generator and sampling-config regressions from the 2026-12 QA pass (qa-2026-12.md): the
// context bound (#11), HF's ranges for sampling values (#14) and non-finite logits (#16).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "infer/generation_defaults.h"
#include "infer/generator.h"
#include "model/init_weights.h"
#include "testutil.h"

using namespace moe;
using namespace moe::infer;

namespace {
model::ModelConfig tiny(int64_t context) {
  model::ModelConfig c;
  c.model_type = "qwen3_moe";
  c.num_layers = 2, c.hidden_size = 32, c.num_attention_heads = 2, c.num_query_groups = 1, c.kv_channels = 16;
  c.vocab_size = 61, c.max_position_embeddings = context, c.ffn_hidden_size = 48;
  c.qk_layernorm = true;
  c.num_experts = 4, c.moe_router_topk = 2, c.moe_ffn_hidden_size = 16;
  c.moe_layer_pattern = {true, true};
  model::validate_config(c, "test");
  return c;
}

std::vector<int32_t> ids(size_t n) {
  std::vector<int32_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = int32_t(1 + i % 50);
  return v;
}
}  // namespace

TEST(QA11, PromptFillingTheContextIsRefusedWithTheNumbers) {
  auto c = tiny(16);
  model::Transformer m(c, model::init_random_state(c, 3, DType::F32));
  Generator gen(m);
  GenerationConfig cfg;
  cfg.max_new_tokens = 4;
  try {
    gen.generate(ids(16), cfg);
    FAIL() << "a 16-token prompt in a 16-token context was accepted";
  } catch (const RequestError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("16 tokens"), std::string::npos) << msg;
    EXPECT_NE(msg.find("max_position_embeddings"), std::string::npos) << msg;
  }
  // The refusal leaves the generator usable: the next, shorter prompt is answered.
  auto res = gen.generate(ids(5), cfg);
  EXPECT_EQ(res.ids.size(), 4u);
}

TEST(QA11, MaxNewTokensIsClippedToTheRoomLeft) {
  auto c = tiny(16);
  model::Transformer m(c, model::init_random_state(c, 3, DType::F32));
  Generator gen(m);
  GenerationConfig cfg;
  cfg.max_new_tokens = 100;  // no stop ids: it runs until the bound
  auto res = gen.generate(ids(10), cfg);
  EXPECT_EQ(res.ids.size(), 6u);  // 10 + 6 = the context of 16
  EXPECT_EQ(res.finish_reason, "length");
}

TEST(QA16, NanWeightsStopWithNonFiniteLogits) {
  auto c = tiny(64);
  auto state = model::init_random_state(c, 3, DType::F32);
  int poisoned = 0;
  for (auto& [name, t] : state)
    if (name.ends_with("final_layernorm.weight")) {
      std::fill(t.f32(), t.f32() + t.numel(), std::numeric_limits<float>::quiet_NaN());
      ++poisoned;
    }
  ASSERT_EQ(poisoned, 1);
  model::Transformer m(c, std::move(state));
  Generator gen(m);
  GenerationConfig cfg;
  cfg.max_new_tokens = 3;
  int streamed = 0;
  try {
    gen.generate(ids(4), cfg, [&](int32_t) { return ++streamed, true; });
    FAIL() << "NaN logits were sampled from";
  } catch (const NonFiniteLogits& e) {
    EXPECT_NE(std::string(e.what()).find("NaN"), std::string::npos) << e.what();
  }
  EXPECT_EQ(streamed, 0) << "a token was produced from NaN logits";
}

TEST(QA14, SamplingValuesFollowHfRanges) {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  for (double bad : {nan, inf, -1.0, 1e39}) EXPECT_NE(sampling_value_problem("temperature", bad), "") << bad;
  for (double ok : {0.0, 0.7, 2.0}) EXPECT_EQ(sampling_value_problem("temperature", ok), "") << ok;
  for (double bad : {2.0, 0.0, -1.0, nan}) EXPECT_NE(sampling_value_problem("top_p", bad), "") << bad;
  for (double ok : {1.0, 0.8, 1e-6}) EXPECT_EQ(sampling_value_problem("top_p", ok), "") << ok;
  for (double bad : {0.0, -1.0, nan, inf}) EXPECT_NE(sampling_value_problem("repetition_penalty", bad), "") << bad;
  EXPECT_EQ(sampling_value_problem("repetition_penalty", 1.05), "");
  for (double bad : {-1.0, 2.5, 1e10, nan}) EXPECT_NE(sampling_value_problem("top_k", bad), "") << bad;
  for (double ok : {0.0, 1.0, 50.0}) EXPECT_EQ(sampling_value_problem("top_k", ok), "") << ok;
}

TEST(QA14, GenerationConfigValuesAreCheckedNamingTheFile) {
  moe::testing::TempDir dir;
  const std::string file = dir.file("generation_config.json");
  moe::testing::write_file(file, R"({"do_sample": true, "temperature": 0.7, "top_p": 2})");
  std::string msg = moe::testing::input_error([&] { load_sampling_defaults(dir.path()); });
  EXPECT_NE(msg.find("generation_config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("top_p"), std::string::npos) << msg;
  EXPECT_NE(msg.find("<= 1"), std::string::npos) << msg;
  moe::testing::write_file(file, R"({"do_sample": true, "repetition_penalty": 0})");
  msg = moe::testing::input_error([&] { load_sampling_defaults(dir.path()); });
  EXPECT_NE(msg.find("repetition_penalty"), std::string::npos) << msg;
  moe::testing::write_file(file, R"({"do_sample": true, "temperature": 0.7, "top_k": 20, "top_p": 0.8})");
  auto p = load_sampling_defaults(dir.path());
  EXPECT_FLOAT_EQ(p.temperature, 0.7f);
  EXPECT_EQ(p.top_k, 20);
}

// --max_batch_size: prompts of different lengths prefilled together (packed, in several passes
// when they pass kPrefillTokens) and decoded together give each row what it gets alone; a row
// that cannot be served gets its error and leaves the others alone.
TEST(GenerateBatch, PackedPrefillAndBatchedDecodeEqualEachRowAlone) {
  auto c = tiny(4096);
  model::Transformer m(c, model::init_random_state(c, 5, DType::F32));
  GenerationConfig cfg;
  cfg.max_new_tokens = 6;
  cfg.logprobs = true;
  cfg.top_logprobs = 3;
  std::vector<std::vector<int32_t>> prompts = {ids(3), ids(17), {}, ids(1), ids(40), ids(4096), ids(9)};
  prompts[4][7] = 55;                                                       // rows differ in content as well as length
  for (size_t n : {size_t(2500), size_t(2000)}) prompts.push_back(ids(n));  // two passes: past kPrefillTokens
  std::vector<std::string> errors;
  const auto batch = generate_batch(m, prompts, cfg, &errors);
  ASSERT_EQ(batch.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE("row " + std::to_string(i));
    if (prompts[i].empty() || prompts[i].size() >= 4096) {
      EXPECT_FALSE(errors[i].empty());
      EXPECT_TRUE(batch[i].ids.empty());
      continue;
    }
    EXPECT_TRUE(errors[i].empty()) << errors[i];
    Generator gen(m);
    const auto alone = gen.generate(prompts[i], cfg);
    EXPECT_EQ(batch[i].ids, alone.ids);
    EXPECT_EQ(batch[i].finish_reason, alone.finish_reason);
    EXPECT_EQ(batch[i].prefilled_tokens, int64_t(prompts[i].size()));
    EXPECT_GT(batch[i].prefill_seconds, 0);
    ASSERT_EQ(batch[i].logprobs.size(), alone.logprobs.size());
    for (size_t t = 0; t < alone.logprobs.size(); ++t)
      EXPECT_NEAR(batch[i].logprobs[t].logprob, alone.logprobs[t].logprob, 1e-4);
  }
}
