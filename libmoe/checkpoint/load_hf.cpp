#include "checkpoint/load_hf.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <memory>

#include <fmt/format.h>

#include "core/log.h"
#include "io/safetensors.h"
#include "io/torch_bin_checkpoint.h"
#include "model/hf_config.h"
#include "model/weight_map.h"

namespace moe::checkpoint {

using model::load_hf_config;
using model::ModelConfig;
using model::StateDict;
using model::WeightMap;
using model::WeightRule;

namespace {

// The HF weight files of a directory, safetensors preferred, torch .bin otherwise.
struct WeightFiles {
  std::function<bool(const std::string&)> has;
  std::function<Shape(const std::string&)> shape;
  std::function<Tensor(const std::string&)> get;
  std::function<std::string(const std::string&)> file_of;
  // Safetensors only: the mapped file holding a tensor, and its byte range there.
  std::function<const MappedFile*(const std::string&, uint64_t*, uint64_t*)> mapped;
  std::vector<std::string> names;
};

WeightFiles open_weights(const std::string& dir) {
  WeightFiles w;
  namespace fs = std::filesystem;
  bool any_safetensors = false;
  if (fs::is_directory(dir))
    for (const auto& e : fs::directory_iterator(dir)) any_safetensors |= e.path().extension() == ".safetensors";
  if (!any_safetensors && io::TorchBinCheckpoint::present(dir)) {
    auto c = std::make_shared<io::TorchBinCheckpoint>(io::TorchBinCheckpoint::open_dir(dir));
    w.has = [c](const std::string& n) { return c->has(n); };
    w.shape = [c](const std::string& n) { return c->shape(n); };
    w.get = [c](const std::string& n) { return c->get(n); };
    w.file_of = [c](const std::string& n) { return c->file_of(n); };
    w.names = c->names();
    return w;
  }
  auto c = std::make_shared<io::SafetensorsCheckpoint>(io::SafetensorsCheckpoint::open_dir(dir));
  w.has = [c](const std::string& n) { return c->has(n); };
  w.shape = [c](const std::string& n) {
    const auto& s = c->info(n).shape;
    return Shape(s.begin(), s.end());
  };
  w.get = [c](const std::string& n) { return c->get(n); };
  w.file_of = [c](const std::string& n) { return c->file_of(n); };
  w.mapped = [c](const std::string& n, uint64_t* begin, uint64_t* end) {
    const auto& i = c->info(n);
    *begin = i.begin, *end = i.end;
    return &c->mapped_file_of(n);
  };
  w.names = c->names();
  return w;
}

// The layer and expert counts the tensor names imply, checked against config.json before the
// WeightMap (one entry per layer and expert) is built: a corrupt count such as
// num_hidden_layers 16000 is refused in one line instead of listing names for it. Weights
// holding more than the config asks for stay allowed (they are ignored, as HF does).
void check_counts_against_names(const std::string& dir, const std::vector<std::string>& names, const ModelConfig& c,
                                const std::string& cfg_file) {
  const model::HfCounts held = model::hf_counts(names);
  if (held.layers < c.num_layers)
    throw_input("{}: num_hidden_layers is {} but the weights in {} hold {} layers; fix config.json or the weights",
                cfg_file, c.num_layers, dir, held.layers);
  bool any_moe = false;
  for (int l = 0; l < c.num_layers; ++l) any_moe |= c.is_moe_layer(l);
  if (any_moe && held.experts < c.num_experts)
    throw_input(
        "{}: the config has {} experts but the weights in {} hold {} per layer; fix config.json or the "
        "weights",
        cfg_file, c.num_experts, dir, held.experts);
}

}  // namespace

struct HfWeights::Files : WeightFiles {};

HfWeights::HfWeights(const std::string& dir, const ModelConfig& c) : files_(std::make_shared<Files>()) {
  static_cast<WeightFiles&>(*files_) = open_weights(dir);
  const std::string cfg_file = (std::filesystem::path(dir) / "config.json").string();
  check_counts_against_names(dir, files_->names, c, cfg_file);
  const WeightMap map = WeightMap::for_config(c);
  size_t used = 0;
  for (const auto& rule : map.rules())
    for (size_t i = 0; i < rule.hf.size(); ++i) {
      const std::string& name = rule.hf[i];
      if (!files_->has(name))
        throw_input("{}: tensor '{}' is missing, but {} (model_type '{}') needs it", dir, name, cfg_file, c.model_type);
      const Shape shape = files_->shape(name);
      if (shape != rule.hf_shapes[i])
        throw_input("{}: tensor '{}' has shape {} but {} implies {}", files_->file_of(name), name, shape_str(shape),
                    cfg_file, shape_str(rule.hf_shapes[i]));
      ++used;
    }
  unused_ = files_->names.size() - std::min(files_->names.size(), used);
  map_ = std::make_shared<WeightMap>(map);
}

HfWeights::~HfWeights() = default;

Tensor HfWeights::canonical(const WeightRule& rule) const {
  std::vector<Tensor> parts;
  for (const auto& name : rule.hf) parts.push_back(files_->get(name));
  for (auto& p : parts)  // fuse in one dtype (checkpoints rarely mix them)
    if (p.dtype() != parts[0].dtype()) p = p.to(parts[0].dtype());
  return map_->to_mcore(rule, parts);
}

void HfWeights::release(const WeightRule& rule) const {
  if (!files_->mapped) return;
  for (const auto& name : rule.hf) {
    uint64_t b = 0, e = 0;
    files_->mapped(name, &b, &e)->drop_pages(b, e - b);
  }
}

bool HfWeights::stored_in(const WeightRule& rule, const Tensor& t, const MappedFile** file, uint64_t* offset) const {
  if (!files_->mapped) return false;
  const auto* p = static_cast<const unsigned char*>(t.raw());
  for (const auto& name : rule.hf) {
    uint64_t b = 0, e = 0;
    const MappedFile* f = files_->mapped(name, &b, &e);
    if (p >= f->data() + b && p + t.nbytes() <= f->data() + e) {
      *file = f, *offset = uint64_t(p - f->data());
      return true;
    }
  }
  return false;
}

bool HfWeights::stored_parts(const WeightRule& rule, DType dtype, std::vector<StoredPart>* parts) const {
  parts->clear();
  if (!files_->mapped) return false;
  for (const auto& name : rule.hf) {
    if (files_->get(name).dtype() != dtype) return false;  // a borrowed view: no byte is read
    uint64_t b = 0, e = 0;
    const MappedFile* f = files_->mapped(name, &b, &e);
    parts->push_back({f, b, e - b});
  }
  return true;
}

LoadedModel load_hf_model(const std::string& dir) {
  LoadedModel m;
  m.config = load_hf_config(dir);
  const HfWeights weights(dir, m.config);
  const WeightMap map = WeightMap::for_config(m.config);
  for (const auto& rule : map.rules()) m.state[rule.mcore] = weights.canonical(rule);
  if (weights.unused_tensors())
    log().info("{}: {} tensors not used by model_type '{}' were ignored", dir, weights.unused_tensors(),
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

}  // namespace moe::checkpoint
