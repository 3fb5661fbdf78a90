#include <gtest/gtest.h>

#include <cstdlib>

#include <nlohmann/json.hpp>

#include "model/hf_config.h"
#include "model/weight_map.h"
#include "testutil.h"

using namespace moe;
using namespace moe::model;
using moe::testing::TempDir;

namespace {
const char* kQwen3Moe = R"({"model_type": "qwen3_moe", "num_hidden_layers": 3, "hidden_size": 64,
  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 300,
  "intermediate_size": 128, "moe_intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2,
  "norm_topk_prob": true, "mlp_only_layers": [1], "decoder_sparse_step": 1, "rms_norm_eps": 1e-6,
  "rope_theta": 1000000, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "hidden_act": "silu"})";

std::string expect_input_error(const std::string& dir) {
  try {
    load_hf_config(dir);
  } catch (const InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no InputError";
  return "";
}
}  // namespace

TEST(HfConfig, Qwen3MoeFields) {
  TempDir d;
  moe::testing::write_file(d.file("config.json"), kQwen3Moe);
  ModelConfig c = load_hf_config(d.path());
  EXPECT_EQ(c.num_layers, 3);
  EXPECT_EQ(c.kv_channels, 32);
  EXPECT_EQ(c.num_query_groups, 2);
  EXPECT_TRUE(c.qk_layernorm);
  EXPECT_FALSE(c.add_qkv_bias);
  EXPECT_FALSE(c.moe_router_pre_softmax);
  EXPECT_EQ(c.params_dtype, DType::BF16);
  EXPECT_TRUE(c.is_moe_layer(0));
  EXPECT_FALSE(c.is_moe_layer(1));
  EXPECT_EQ(c.qkv_rows(), 2 * (2 + 2) * 32);
  // dense layer 1 uses intermediate_size; WeightMap names follow
  auto map = WeightMap::for_config(c);
  bool dense_fc1 = false;
  for (const auto& r : map.rules())
    if (r.mcore == "decoder.layers.1.mlp.linear_fc1.weight") dense_fc1 = r.shape == Shape{256, 64};
  EXPECT_TRUE(dense_fc1);
}

TEST(HfConfig, ErrorsNameFileAndField) {
  TempDir d;
  const std::string cfg = d.file("config.json");
  moe::testing::write_file(cfg, "{not json");
  EXPECT_NE(expect_input_error(d.path()).find("config.json: not valid JSON"), std::string::npos);
  moe::testing::write_file(cfg, R"({"model_type": "gpt2"})");
  EXPECT_NE(expect_input_error(d.path()).find("model_type 'gpt2' is not supported"), std::string::npos);
  moe::testing::write_file(cfg, R"({"model_type": "llama", "hidden_size": 64})");
  EXPECT_NE(expect_input_error(d.path()).find("missing field 'num_hidden_layers'"), std::string::npos);
  std::string bad = kQwen3Moe;
  bad.replace(bad.find("\"num_key_value_heads\": 2"), 24, "\"num_key_value_heads\": 3");
  moe::testing::write_file(cfg, bad);
  EXPECT_NE(expect_input_error(d.path()).find("multiple of num_key_value_heads"), std::string::npos);
  bad = kQwen3Moe;
  bad.replace(bad.find("\"rope_theta\""), 0, R"("rope_scaling": {"rope_type": "dynamic", "factor": 2.0}, )");
  moe::testing::write_file(cfg, bad);
  EXPECT_NE(expect_input_error(d.path()).find("rope_type 'dynamic' is not supported"), std::string::npos);
  bad = kQwen3Moe;
  bad.replace(bad.find("\"hidden_size\": 64"), 17, "\"hidden_size\": \"64\"");
  moe::testing::write_file(cfg, bad);
  EXPECT_NE(expect_input_error(d.path()).find("field 'hidden_size' must be an integer"), std::string::npos);
}

TEST(HfConfig, EosFromGenerationConfigWins) {
  TempDir d;
  moe::testing::write_file(d.file("config.json"), kQwen3Moe);
  moe::testing::write_file(d.file("generation_config.json"), R"({"eos_token_id": [5, 7], "bos_token_id": 1})");
  ModelConfig c = load_hf_config(d.path());
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{5, 7}));
  EXPECT_EQ(c.bos_token_id, 1);
}

TEST(WeightMap, QkvFusionPerGroupAndInverse) {
  ModelConfig c;
  c.model_type = "qwen2", c.num_layers = 1, c.hidden_size = 2, c.num_attention_heads = 4, c.num_query_groups = 2;
  c.kv_channels = 1, c.vocab_size = 4, c.ffn_hidden_size = 2, c.add_qkv_bias = true;
  c.moe_layer_pattern = {false};
  auto map = WeightMap::for_config(c);
  const WeightRule* rule = nullptr;
  for (const auto& r : map.rules())
    if (r.mcore == "decoder.layers.0.self_attention.linear_qkv.bias") rule = &r;
  ASSERT_NE(rule, nullptr);
  Tensor q({4}, DType::F32), k({2}, DType::F32), v({2}, DType::F32);
  for (int i = 0; i < 4; ++i) q.f32()[i] = float(10 + i);
  for (int i = 0; i < 2; ++i) k.f32()[i] = float(20 + i), v.f32()[i] = float(30 + i);
  Tensor fused = map.to_mcore(*rule, {q, k, v});
  // group 0: q0 q1 k0 v0, group 1: q2 q3 k1 v1
  std::vector<float> want = {10, 11, 20, 30, 12, 13, 21, 31};
  EXPECT_EQ(std::vector<float>(fused.f32(), fused.f32() + 8), want);
  auto back = map.to_hf(*rule, fused);
  EXPECT_EQ(std::vector<float>(back[0].f32(), back[0].f32() + 4), std::vector<float>(q.f32(), q.f32() + 4));
  EXPECT_EQ(std::vector<float>(back[2].f32(), back[2].f32() + 2), std::vector<float>(v.f32(), v.f32() + 2));
}

namespace {
// kQwen3Moe with `field` set to the raw JSON text `value`.
std::string with_field(const std::string& field, const std::string& value) {
  auto j = nlohmann::json::parse(kQwen3Moe);
  j[field] = nlohmann::json::parse(value);
  return j.dump();
}

std::string error_for(const std::string& config_json) {
  TempDir d;
  moe::testing::write_file(d.file("config.json"), config_json);
  return expect_input_error(d.path());
}
}  // namespace

// QA #5: a billion layers was accepted, and infer/export/plan/init then ate all memory.
TEST(HfConfig, QA05_HugeLayerCountRefusedWithTheRange) {
  const std::string msg = error_for(with_field("num_hidden_layers", "1000000000"));
  EXPECT_NE(msg.find("'num_hidden_layers' must be an integer from 1 to 16384, got 1000000000"), std::string::npos)
      << msg;
}

// QA #5: every size in range, but their product is not a model that can exist.
TEST(HfConfig, QA05_AbsurdParameterCountRefused) {
  auto j = nlohmann::json::parse(kQwen3Moe);
  j["num_hidden_layers"] = 16384;
  j["hidden_size"] = 1 << 20;
  j["moe_intermediate_size"] = 1 << 22;
  j["mlp_only_layers"] = nlohmann::json::array();
  std::string msg = error_for(j.dump());
  EXPECT_NE(msg.find("parameters, over the limit"), std::string::npos) << msg;
  // Few parameters, but one set of tensor names per expert of every layer: 2^30 of them.
  j = nlohmann::json::parse(kQwen3Moe);
  j["num_hidden_layers"] = 16384;
  j["num_experts"] = 65536;
  j["mlp_only_layers"] = nlohmann::json::array();
  msg = error_for(j.dump());
  EXPECT_NE(msg.find("16384 MoE layers x 65536 experts = 1073741824 expert instances, over the limit of 262144"),
            std::string::npos)
      << msg;
}

// QA #13: 4294967424 = 2^32 + 128 was narrowed to int and ran as hidden 128.
TEST(HfConfig, QA13_SizesAreRangeCheckedBeforeNarrowing) {
  std::string msg = error_for(with_field("hidden_size", "4294967424"));
  EXPECT_NE(msg.find("'hidden_size' must be an integer from 1 to 1048576, got 4294967424"), std::string::npos) << msg;
  msg = error_for(with_field("num_attention_heads", "4294967300"));  // 2^32 + 4 would run as 4 heads
  EXPECT_NE(msg.find("'num_attention_heads'"), std::string::npos) << msg;
  msg = error_for(with_field("mlp_only_layers", "[4294967297]"));  // would run as layer 1
  EXPECT_NE(msg.find("'mlp_only_layers' must be an integer from 0 to 2, got 4294967297"), std::string::npos) << msg;
  msg = error_for(with_field("eos_token_id", "[4294967298]"));
  EXPECT_NE(msg.find("'eos_token_id' must be an integer from 0 to 299"), std::string::npos) << msg;
  // Above INT64_MAX: nlohmann holds it unsigned, and get<int64_t>() wrapped it to -1.
  msg = error_for(with_field("head_dim", "18446744073709551615"));
  EXPECT_NE(msg.find("'head_dim' is 18446744073709551615, too large"), std::string::npos) << msg;
  // Floats: only whole numbers inside int64 are integers (casting 1e300 is undefined behaviour).
  for (const char* v : {"1e300", "-1e300", "128.5", "\"128\""}) {
    msg = error_for(with_field("hidden_size", v));
    EXPECT_NE(msg.find("'hidden_size' must be an integer"), std::string::npos) << v << ": " << msg;
  }
  TempDir d;
  moe::testing::write_file(d.file("config.json"), with_field("hidden_size", "64.0"));
  EXPECT_EQ(load_hf_config(d.path()).hidden_size, 64);
}

// QA #15: a negative expert count was read as "no experts" and the model ran dense.
TEST(HfConfig, QA15_NegativeExpertCountRefused) {
  const std::string msg = error_for(with_field("num_experts", "-8"));
  EXPECT_NE(msg.find("'num_experts' must be an integer from 0 to 65536, got -8"), std::string::npos) << msg;
  EXPECT_NE(error_for(with_field("decoder_sparse_step", "-1")).find("'decoder_sparse_step'"), std::string::npos);
  EXPECT_NE(error_for(with_field("intermediate_size", "-1")).find("'intermediate_size'"), std::string::npos);
}

// The bounds leave every real model alone: the example configs load with their true sizes.
TEST(HfConfig, LimitsAcceptTheExampleConfigs) {
  const char* src = std::getenv("MOE_SOURCE_DIR");
  if (!src) GTEST_SKIP() << "MOE_SOURCE_DIR is not set (ctest sets it)";
  const std::string dir = std::string(src) + "/configs/";
  EXPECT_NEAR(double(load_hf_config(dir + "Qwen3-235B-A22B").num_parameters()), 235e9, 1e9);
  EXPECT_NEAR(double(load_hf_config(dir + "Mixtral-8x22B").num_parameters()), 141e9, 1e9);
}
