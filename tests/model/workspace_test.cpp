// The workspace sizes (model/workspace.h) are what the Stage carves, exactly: after a training
// step, and after an evaluation, the two arenas' high-water marks equal stage_workspace's saved and
// scratch bytes, for every family and recompute setting and with capacity dropping (the routed
// rows carved for the worst case), and the kept bytes add up by layer. The planner reads these
// numbers, so an engine change that carves more or less shows up here, not as a wrong plan.
#include <gtest/gtest.h>

#include <cstdlib>

#include "model/hf_config.h"
#include "model/init_weights.h"
#include "model/train_model.h"
#include "model/workspace.h"

namespace moe::model {
namespace {

ModelConfig tiny(const std::string& family) {
  const char* src = std::getenv("MOE_SOURCE_DIR");
  return load_hf_config(std::string(src ? src : ".") + "/configs/tiny/" + family);
}

struct Case {
  const char* name;
  TrainOptions o;
};

std::vector<Case> cases() {
  TrainOptions none;
  none.recompute.granularity = Recompute::kNone;
  std::vector<Case> v = {{"none", none}};
  TrainOptions sel;
  sel.recompute.modules = {"core_attn", "layernorm", "moe_act"};
  v.push_back({"selective", sel});
  TrainOptions branch;
  branch.recompute.modules = {"core_attn", "mlp", "moe"};
  v.push_back({"selective mlp moe", branch});
  TrainOptions full = none;
  full.recompute.granularity = Recompute::kFull, full.recompute.num_layers = 2;
  v.push_back({"full uniform 2", full});
  full.recompute.method = "block", full.recompute.num_layers = 1;
  v.push_back({"full block 1", full});
  TrainOptions drop = none;
  drop.moe.capacity_factor = 0.5;
  v.push_back({"capacity 0.5", drop});
  drop.moe.capacity_factor = 1.0, drop.moe.pad_expert_input_to_capacity = true;
  v.push_back({"capacity 1.0 padded", drop});
  return v;
}

TEST(StageWorkspace, ArenasHoldExactlyWhatStageWorkspaceSays) {
  for (const char* family : {"qwen2_moe", "qwen3_moe", "llama"}) {
    const ModelConfig c = tiny(family);
    const StateDict init = init_random_state(c, 3, DType::F32, 0.05);
    std::vector<int32_t> tokens, labels, pos, cu = {0, 7, 19};
    for (int t = 0; t < 19; ++t) {
      tokens.push_back(int32_t((t * 131 + 7) % c.vocab_size));
      labels.push_back(t % 4 == 0 ? -100 : int32_t((t * 31 + 3) % c.vocab_size));
      pos.push_back(t < 7 ? t : t - 7);
    }
    for (const Case& k : cases()) {
      const std::string what = std::string(family) + ", " + k.name;
      TrainModel m(c, init, k.o);
      m.forward_backward({tokens, labels, pos, cu}, 0.1f, 1.0f);
      const StageWorkspace w = m.stage().workspace(19, StageCall::kTrain);
      EXPECT_EQ(m.activations().arena.high_water(), w.saved) << what;
      EXPECT_EQ(m.stage().context().workspace->high_water(), w.scratch) << what;
      EXPECT_EQ(m.activations().arena.used(), 0u) << what;
      EXPECT_EQ(m.stage().context().workspace->used(), 0u) << what;
      size_t kept = w.step;
      for (const LayerBytes& b : w.layers) kept += b.total();
      EXPECT_EQ(kept, w.saved) << what;
      EXPECT_GT(w.head, 0u) << what;
      // Evaluation on a fresh model: its own sizes, exactly.
      TrainModel ev(c, init, k.o);
      ev.evaluate({tokens, labels, pos, cu});
      const StageWorkspace e = ev.stage().workspace(19, StageCall::kEvaluate);
      EXPECT_EQ(ev.activations().arena.high_water(), e.saved) << what;
      EXPECT_EQ(ev.stage().context().workspace->high_water(), e.scratch) << what;
    }
  }
}

}  // namespace
}  // namespace moe::model
