// Loading HF directories: safetensors and torch .bin (single and indexed) give the same model.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "checkpoint/load_hf.h"
#include "io/torch_file.h"
#include "model/hf_config.h"
#include "model/init_weights.h"
#include "model/transformer.h"
#include "model/weight_map.h"
#include "testutil.h"

using namespace moe;
using namespace moe::model;
using namespace moe::checkpoint;
using moe::testing::TempDir;

namespace {

const char* kConfig = R"({"model_type": "qwen2_moe", "num_hidden_layers": 2, "hidden_size": 32,
  "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 64, "intermediate_size": 48,
  "moe_intermediate_size": 16, "shared_expert_intermediate_size": 24, "num_experts": 4,
  "num_experts_per_tok": 2, "mlp_only_layers": [1], "torch_dtype": "bfloat16"})";

std::vector<float> logits(const std::string& dir) {
  auto m = load_hf_model(dir);
  Transformer t(m.config, std::move(m.state));
  std::vector<float> out(static_cast<size_t>(t.config().vocab_size));
  std::vector<int32_t> ids = {1, 5, 9, 33};
  t.forward(ids, out.data());
  return out;
}

// Writes the HF tensors of `state` as torch .bin files: one, or `shards` with an index.
void save_bin(const ModelConfig& c, const StateDict& state, const std::string& dir, int shards) {
  const WeightMap map = WeightMap::for_config(c);
  std::vector<std::pair<std::string, Tensor>> hf;
  for (const auto& rule : map.rules()) {
    auto parts = map.to_hf(rule, state.at(rule.mcore));
    for (size_t i = 0; i < parts.size(); ++i) hf.push_back({rule.hf[i], parts[i]});
  }
  nlohmann::json wm;
  for (int s = 0; s < shards; ++s) {
    const std::string file =
        shards == 1 ? "pytorch_model.bin"
                    : "pytorch_model-0000" + std::to_string(s + 1) + "-of-0000" + std::to_string(shards) + ".bin";
    auto root = io::PyValue::container(io::PyValue::kOrderedDict);
    std::vector<std::pair<std::string, Tensor>> storages;
    for (size_t i = size_t(s); i < hf.size(); i += size_t(shards)) {
      const auto& [name, t] = hf[i];
      const io::TensorRef r = io::contiguous_ref(std::to_string(storages.size()), t);
      root->set(name, io::PyValue::tensor_ref(r));
      storages.push_back({r.storage_key, t});
      wm[name] = file;
    }
    io::write_torch_file((std::filesystem::path(dir) / file).string(), *root, storages);
  }
  if (shards > 1) std::ofstream(dir + "/pytorch_model.bin.index.json") << nlohmann::json{{"weight_map", wm}}.dump();
}

}  // namespace

TEST(LoadHf, SafetensorsAndTorchBinGiveTheSameModel) {
  TempDir a, b, c;
  for (auto* d : {&a, &b, &c}) moe::testing::write_file(d->file("config.json"), kConfig);
  ModelConfig cfg = load_hf_config(a.path());
  StateDict state = init_random_state(cfg, 3, DType::BF16, 0.2);
  save_hf_weights(cfg, state, a.path());
  save_bin(cfg, state, b.path(), 1);
  save_bin(cfg, state, c.path(), 3);
  const auto la = logits(a.path()), lb = logits(b.path()), lc = logits(c.path());
  EXPECT_EQ(la, lb);
  EXPECT_EQ(la, lc);
  // a .bin missing a tensor names it
  std::filesystem::remove(c.file("pytorch_model-00002-of-00003.bin"));
  try {
    load_hf_model(c.path());
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("pytorch_model-00002-of-00003.bin"), std::string::npos) << e.what();
  }
}

// QA #5: a config whose counts disagree with the weights is refused from the tensor names,
// before the per-layer, per-expert names of the config are built or anything is read.
TEST(LoadHf, QA05_ConfigCountsCheckedAgainstTheWeightNames) {
  TempDir d;
  moe::testing::write_file(d.file("config.json"), kConfig);
  const ModelConfig cfg = load_hf_config(d.path());
  save_hf_weights(cfg, init_random_state(cfg, 3, DType::BF16), d.path());
  auto expect_error = [&](const char* field, int value, const std::string& want) {
    auto j = nlohmann::json::parse(kConfig);
    j[field] = value;
    moe::testing::write_file(d.file("config.json"), j.dump());
    const std::string msg = moe::testing::input_error([&] { load_hf_model(d.path()); });
    EXPECT_NE(msg.find(want), std::string::npos) << msg;
  };
  expect_error("num_hidden_layers", 16000,
               "num_hidden_layers is 16000 but the weights in " + d.path() + " hold 2 layers");
  expect_error("num_experts", 60000,
               "the config has 60000 experts but the weights in " + d.path() + " hold 4 per layer");
}

// init refuses, before allocating, a model larger than the memory the process may use.
TEST(InitWeights, QA05_ModelLargerThanMemoryRefused) {
  TempDir d;
  auto j = nlohmann::json::parse(kConfig);
  j["vocab_size"] = 1 << 24;
  j["hidden_size"] = 1 << 16;  // 2 x 2^40 embedding parameters: 4 TiB in bf16
  j["num_attention_heads"] = 64;
  j["num_key_value_heads"] = 64;
  moe::testing::write_file(d.file("config.json"), j.dump());
  const ModelConfig cfg = load_hf_config(d.path());
  const std::string msg = moe::testing::input_error([&] { init_random_state(cfg, 1, DType::BF16); });
  EXPECT_NE(msg.find("more than the"), std::string::npos) << msg;
  EXPECT_NE(msg.find("GiB of memory this process may use"), std::string::npos) << msg;
}
