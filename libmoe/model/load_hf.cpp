#include "model/load_hf.h"

#include <filesystem>

#include "core/log.h"
#include "io/safetensors.h"
#include "model/hf_config.h"
#include "model/weight_map.h"

namespace moe::model {

LoadedModel load_hf_model(const std::string& dir) {
  LoadedModel m;
  m.config = load_hf_config(dir);
  auto ckpt = io::SafetensorsCheckpoint::open_dir(dir);
  const std::string cfg_file = (std::filesystem::path(dir) / "config.json").string();
  const WeightMap map = WeightMap::for_config(m.config);
  size_t used = 0;
  for (const auto& rule : map.rules()) {
    std::vector<Tensor> parts;
    for (size_t i = 0; i < rule.hf.size(); ++i) {
      const std::string& name = rule.hf[i];
      if (!ckpt.has(name))
        throw_input("{}: tensor '{}' is missing, but {} (model_type '{}') needs it", dir, name, cfg_file,
                    m.config.model_type);
      const auto& info = ckpt.info(name);
      if (Shape(info.shape.begin(), info.shape.end()) != rule.hf_shapes[i])
        throw_input("{}: tensor '{}' has shape {} but {} implies {}", ckpt.file_of(name), name,
                    shape_str(Shape(info.shape.begin(), info.shape.end())), cfg_file, shape_str(rule.hf_shapes[i]));
      parts.push_back(ckpt.get(name));
      ++used;
    }
    for (auto& p : parts)  // fuse in one dtype (checkpoints rarely mix them)
      if (p.dtype() != parts[0].dtype()) p = p.to(parts[0].dtype());
    m.state[rule.mcore] = map.to_mcore(rule, parts);
  }
  if (used < ckpt.names().size())
    log().info("{}: {} tensors not used by model_type '{}' were ignored", dir, ckpt.names().size() - used,
               m.config.model_type);
  return m;
}

void save_hf_weights(const ModelConfig& c, const StateDict& state, const std::string& dir, uint64_t max_shard_bytes) {
  const WeightMap map = WeightMap::for_config(c);
  io::ShardedSafetensorsWriter writer(dir, max_shard_bytes);
  for (const auto& rule : map.rules()) {
    auto it = state.find(rule.mcore);
    MOE_ASSERT(it != state.end(), "state lacks {}", rule.mcore);
    std::vector<Tensor> hf = map.to_hf(rule, it->second);
    for (size_t i = 0; i < hf.size(); ++i) writer.add(rule.hf[i], hf[i]);
  }
  writer.finish();
}

}  // namespace moe::model
