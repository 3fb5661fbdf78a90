#include "checkpoint/mcore_reader.h"

#include <cctype>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"
#include "model/hf_config.h"

namespace moe::checkpoint {

namespace fs = std::filesystem;
using model::load_hf_config;
using model::ModelConfig;
using model::ShardSpec;
using model::StateDict;
using model::WeightMap;
using model::WeightRule;
namespace names = model::names;

int64_t read_checkpoint_tracker(const std::string& mcore_dir) {
  const fs::path tracker = fs::path(mcore_dir) / "latest_checkpointed_iteration.txt";
  if (!fs::exists(tracker))
    throw_input("{}: no latest_checkpointed_iteration.txt (not a Megatron checkpoint directory, or an unfinished one)",
                mcore_dir);
  std::string it = read_text_file(tracker.string());
  while (!it.empty() && std::isspace(static_cast<unsigned char>(it.back()))) it.pop_back();
  // Digits only: "1/../x" once read as iteration 1 (QA #20).
  const bool digits = !it.empty() && it.size() <= 12 && it.find_first_not_of("0123456789") == std::string::npos;
  if (!digits) throw_input("{}: expected an iteration number, got '{}'", tracker.string(), it.substr(0, 40));
  return std::stoll(it);
}

dist::ParallelLayout saved_layout(const fs::path& args_json, int& divisible_by) {
  dist::ParallelLayout layout;
  if (!fs::exists(args_json)) return layout;
  auto aj = nlohmann::json::parse(read_text_file(args_json.string()), nullptr, false);
  if (aj.is_discarded() || !aj.is_object()) throw_input("{}: not a valid JSON object", args_json.string());
  try {
    layout.tp = aj.value("tensor_model_parallel_size", 1), layout.pp = aj.value("pipeline_model_parallel_size", 1);
    layout.ep = aj.value("expert_model_parallel_size", 1);
    layout.etp = aj.value("expert_tensor_parallel_size", layout.tp);  // Megatron's default: TP
    // Uneven pipeline stages as the training run split them (0: even).
    layout.first_stage_layers = aj.value("decoder_first_pipeline_num_layers", 0);
    layout.last_stage_layers = aj.value("decoder_last_pipeline_num_layers", 0);
    divisible_by = aj.value("make_vocab_size_divisible_by", divisible_by);
  } catch (const nlohmann::json::exception&) {
    throw_input("{}: the parallel sizes must be integers", args_json.string());
  }
  return layout;
}

McoreReader::McoreReader(const std::string& mcore_dir) : dir_(mcore_dir) {
  const int64_t iteration = read_checkpoint_tracker(mcore_dir);
  char iter_name[32];
  std::snprintf(iter_name, sizeof iter_name, "iter_%07lld", static_cast<long long>(iteration));
  iter_dir_ = dir_ / iter_name;
  config_ = load_hf_config(mcore_dir);
  int divisible_by = ExportOptions{}.make_vocab_size_divisible_by;
  const dist::ParallelLayout layout = saved_layout(dir_ / "args.json", divisible_by);
  spec_ = std::make_unique<ShardSpec>(config_, layout, divisible_by);
  if (detect_checkpoint_format(iter_dir_) == CkptFormat::kTorchDist) dist_ = std::make_unique<DistReader>(iter_dir_);
}

DistKey McoreReader::dist_shape_checked(const WeightRule& rule) const {
  DistKey k = dist_key(config_, rule.mcore, rule.shape);
  const Shape& got = dist_->shape(k.fqn);
  bool ok = got.size() == k.global.size();
  for (size_t d = 0; ok && d < got.size(); ++d)  // Megatron allows any padded vocabulary that holds V rows
    ok = got[d] == k.global[d] || (is_vocab_tensor(rule.mcore) && d == 0 && got[d] >= k.global[d]);
  if (!ok)
    throw_input("{}: tensor '{}' has global shape {} but config.json implies {}", (iter_dir_ / ".metadata").string(),
                k.fqn, shape_str(got), shape_str(k.global));
  return k;
}

Tensor McoreReader::dist_tensor(const WeightRule& rule, DType dtype, DistReader::Stored* stored) const {
  const DistKey k = dist_shape_checked(rule);
  Tensor t = dist_->read(k.fqn, k.index, dtype, stored);
  if (is_vocab_tensor(rule.mcore) && t.dim(0) != config_.vocab_size) t = t.slice_rows(0, config_.vocab_size);
  return t;
}

const McoreReader::Rank& McoreReader::rank(int tp, int pp, int ep) {
  const std::string rd = spec_->rank_dir(tp, pp, ep);
  if (auto it = ranks_.find(rd); it != ranks_.end()) return it->second;
  const fs::path path = iter_dir_ / rd / "model_optim_rng.pt";
  const dist::ParallelLayout& l = spec_->layout();
  if (!fs::exists(path))
    throw_input("{}: missing (args.json says TP={} PP={} EP={} ETP={})", path.string(), l.tp, l.pp, l.ep, l.etp);
  Rank r;
  r.path = path.string();
  r.file = std::make_shared<io::TorchFile>(io::TorchFile::open(r.path));
  r.model = r.file->root()->get("model");
  if (!r.model) throw_input("{}: no 'model' entry", r.path);
  return ranks_.emplace(rd, std::move(r)).first->second;
}

void McoreReader::check(const WeightRule& rule) {
  if (dist_) {
    dist_shape_checked(rule);
    return;
  }
  const Shape full = stored_shape(rule);
  spec_->for_each_piece(rule.mcore, [&](int tp, int pp, int ep, const std::string& local) {
    const Rank& r = rank(tp, pp, ep);
    const io::TensorRef& t = ref(r, local);
    std::string name;
    Shape want;
    spec_->local_part(rule.mcore, full, tp, pp, ep, &name, &want);
    if (t.shape != want)
      throw_input("{}: tensor '{}' has shape {} but config.json and args.json (TP={} ETP={}) imply {}", r.path, local,
                  shape_str(t.shape), spec_->layout().tp, spec_->layout().etp, shape_str(want));
    r.file->locate(t);
  });
}

LoadedModel load_mcore_model(const std::string& mcore_dir, DType dtype) {
  McoreReader r(mcore_dir);
  const ModelConfig& c = r.config();
  const WeightMap map = WeightMap::for_config(c);
  LoadedModel m;
  m.config = c;
  auto get = [&](int tp, int pp, int ep, const std::string& local) {
    const auto& rk = r.rank(tp, pp, ep);
    return rk.file->tensor(r.ref(rk, local));
  };
  if (r.dist()) {
    for (const auto& rule : map.rules()) m.state[rule.mcore] = r.dist_tensor(rule, rule.buffer ? DType::F32 : dtype);
    return m;
  }
  for (const auto& rule : map.rules()) {
    Tensor t = r.spec().merge(rule.mcore, r.stored_shape(rule), rule.buffer ? DType::F32 : dtype, get);
    if (is_vocab_tensor(rule.mcore)) t = t.slice_rows(0, c.vocab_size);  // drop Megatron's padding rows
    m.state[rule.mcore] = t;
  }
  return m;
}

LoadedModel load_model(const std::string& dir) {
  if (!fs::exists(fs::path(dir) / "latest_checkpointed_iteration.txt")) return load_hf_model(dir);
  return load_mcore_model(dir, load_hf_config(dir).params_dtype);
}

}  // namespace moe::checkpoint
