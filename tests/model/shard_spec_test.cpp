// ShardSpec's local shapes: what one rank of a layout holds, which sizes every engine module
// (heads, groups, experts, vocabulary rows, layers). Hand-computed for the tiny Qwen3-MoE.
#include <gtest/gtest.h>

#include <cstdlib>

#include "model/hf_config.h"
#include "model/shard_spec.h"

namespace moe::model {
namespace {

ModelConfig tiny_qwen3_moe() {
  const char* src = std::getenv("MOE_SOURCE_DIR");
  return load_hf_config(std::string(src ? src : ".") + "/configs/tiny/qwen3_moe");
}

TEST(ShardSpec, OneRankHoldsTheWholeModel) {
  const ModelConfig c = tiny_qwen3_moe();  // 4 heads, 2 groups, 8 experts, 3 layers, vocab 512
  const LocalShapes s = ShardSpec(c, {}, 1).local_shapes(0, 0, 0);
  EXPECT_EQ(s.heads, 4);
  EXPECT_EQ(s.query_groups, 2);
  EXPECT_EQ(s.expert_begin, 0);
  EXPECT_EQ(s.experts, 8);
  EXPECT_EQ(s.vocab_begin, 0);
  EXPECT_EQ(s.vocab_rows, 512);
  EXPECT_EQ(s.layer_begin, 0);
  EXPECT_EQ(s.layers, 3);
}

TEST(ShardSpec, TensorAndExpertParallelRankHoldsItsSlice) {
  ModelConfig c = tiny_qwen3_moe();
  c.vocab_size = 500;  // padded to 128 x TP = 256: 512 rows, 256 per TP rank
  dist::ParallelLayout p;
  p.tp = 2, p.ep = 4;
  const LocalShapes s = ShardSpec(c, p, 128).local_shapes(1, 0, 3);
  EXPECT_EQ(s.heads, 2);
  EXPECT_EQ(s.query_groups, 1);
  EXPECT_EQ(s.expert_begin, 6);
  EXPECT_EQ(s.experts, 2);
  EXPECT_EQ(s.vocab_begin, 256);
  EXPECT_EQ(s.vocab_rows, 256);
  EXPECT_EQ(s.layers, 3);
}

}  // namespace
}  // namespace moe::model
