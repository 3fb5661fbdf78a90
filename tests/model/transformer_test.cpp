// Whole-model properties that need no reference implementation: a prefill over T tokens and
// T single-token decode steps through the KV cache give the same logits; routing is per token;
// weights stored in bf16 behave like their f32 widening.
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "infer/kv_cache.h"
#include "model/init_weights.h"
#include "model/transformer.h"

using namespace moe;
using namespace moe::model;

namespace {
ModelConfig tiny(const std::string& type) {
  ModelConfig c;
  c.model_type = type;
  c.num_layers = 3, c.hidden_size = 64, c.num_attention_heads = 4, c.num_query_groups = 2, c.kv_channels = 16;
  c.vocab_size = 97, c.max_position_embeddings = 512, c.ffn_hidden_size = 96;
  c.qk_layernorm = type == "qwen3_moe";
  c.add_qkv_bias = type == "qwen2_moe";
  if (type != "llama") {
    c.num_experts = 6, c.moe_router_topk = 2, c.moe_ffn_hidden_size = 32;
    c.moe_router_pre_softmax = type == "qwen2_moe";
    if (type == "qwen2_moe") c.moe_shared_expert_intermediate_size = 48, c.moe_shared_expert_gate = true;
  }
  c.moe_layer_pattern = {true, false, true};
  c.rope_scaling.type = "yarn", c.rope_scaling.factor = 2.0, c.rope_scaling.original_max_position_embeddings = 64;
  return c;
}

float max_rel_diff(const std::vector<float>& a, const float* b, size_t n) {
  float m = 0, s = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i])), s = std::max(s, std::fabs(b[i]));
  return m / s;
}
}  // namespace

class TransformerFamilies : public ::testing::TestWithParam<std::string> {};

TEST_P(TransformerFamilies, PrefillEqualsIncrementalDecode) {
  ModelConfig c = tiny(GetParam());
  validate_config(c, "test");
  Transformer m(c, init_random_state(c, 5, DType::F32, 0.2));
  const int64_t T = 9, V = c.vocab_size;
  std::vector<int32_t> ids = {3, 14, 15, 92, 65, 35, 89, 79, 32};
  moe::infer::KvCache cache(m.config());
  std::vector<float> all(size_t(T * V));
  m.forward(ids, cache, all.data(), /*all_logits=*/true);
  EXPECT_EQ(cache.length(), T);
  moe::infer::KvCache inc(m.config());
  std::vector<float> step(static_cast<size_t>(V));
  for (int64_t t = 0; t < T; ++t) {
    m.forward(std::span<const int32_t>(&ids[size_t(t)], 1), inc, step.data());
    EXPECT_LT(max_rel_diff(step, all.data() + t * V, size_t(V)), 1e-4) << "position " << t;
  }
  // Prefill in two chunks also agrees (the cache holds the first chunk).
  moe::infer::KvCache two(m.config());
  std::vector<float> tail(static_cast<size_t>(V));
  m.forward(std::span<const int32_t>(ids.data(), 4), two, tail.data());
  m.forward(std::span<const int32_t>(ids.data() + 4, size_t(T - 4)), two, tail.data());
  EXPECT_LT(max_rel_diff(tail, all.data() + (T - 1) * V, size_t(V)), 1e-4);
}

TEST_P(TransformerFamilies, Bf16WeightsMatchTheirF32Widening) {
  ModelConfig c = tiny(GetParam());
  StateDict bf = init_random_state(c, 6, DType::BF16, 0.2);
  StateDict f32;
  for (const auto& [k, v] : bf) f32[k] = v.to(DType::F32);
  Transformer a(c, bf), b(c, f32);
  std::vector<int32_t> ids = {1, 2, 3, 50, 60};
  std::vector<float> la(size_t(c.vocab_size)), lb(size_t(c.vocab_size));
  moe::infer::KvCache ca(a.config()), cb(b.config());
  a.forward(ids, ca, la.data());
  b.forward(ids, cb, lb.data());
  EXPECT_LT(max_rel_diff(la, lb.data(), la.size()), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Families, TransformerFamilies,
                         ::testing::Values("qwen3_moe", "qwen2_moe", "mixtral", "llama"));

TEST(Transformer, RejectsOutOfVocabIdsAndWrongShapes) {
  ModelConfig c = tiny("qwen3_moe");
  StateDict s = init_random_state(c, 1, DType::F32);
  Transformer m(c, s);
  moe::infer::KvCache cache(m.config());
  std::vector<float> l(size_t(c.vocab_size));
  std::vector<int32_t> bad = {1, 97};
  EXPECT_THROW(m.forward(bad, cache, l.data()), InputError);
  s["decoder.final_layernorm.weight"] = Tensor({63}, DType::F32);
  EXPECT_THROW(Transformer(c, s), InputError);
}
