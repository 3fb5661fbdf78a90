// Internal to checkpoint/: reading a Megatron directory as export writes it (McoreReader),
// shared by load_mcore_model (mcore_reader.cpp) and export_mcore_to_hf (export_to_hf.cpp), and
// the small helpers both export directions use.
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "checkpoint/mcore_export.h"
#include "checkpoint/torch_dist.h"
#include "core/output_dir.h"
#include "io/torch_file.h"
#include "model/state_dict.h"
#include "model/weight_map.h"

namespace moe::checkpoint {

// The embedding and the output layer: Megatron pads their rows to the padded vocabulary.
inline bool is_vocab_tensor(const std::string& name) {
  return name == model::names::kEmbedding || name == model::names::kOutput;
}

// Output directory handling shared by both directions (core/output_dir.h): the target is
// checked against the input before any work, built beside it and swapped in at the end.
inline std::unique_ptr<StagedDir> begin_output(const std::string& in_dir, const std::string& out_dir, bool overwrite) {
  return std::make_unique<StagedDir>("--output_dir", resolve_output_dir("--output_dir", out_dir, {in_dir}), overwrite);
}

using model::ModelConfig;
using model::ShardSpec;
using model::WeightRule;

// The parallel layout (and --make_vocab_size_divisible_by into `divisible_by`) that a run's
// args.json records; a missing file: one rank, `divisible_by` untouched. InputError naming the
// file when it is not a JSON object or a size is not an integer.
dist::ParallelLayout saved_layout(const std::filesystem::path& args_json, int& divisible_by);

// A Megatron directory opened for reading: tracker, config.json, the layout from moectl's
// args.json (a single rank without it) and its rank files, each mapped on first use. After
// open_all(), lookups only read, so several threads may share it.
class McoreReader {
 public:
  // Reads the tracker, config.json and args.json; InputError naming the file for any that is
  // missing or malformed.
  // Detects the format of the iteration dir (torch_dist: .metadata read and checked whole here).
  explicit McoreReader(const std::string& mcore_dir);
  const ModelConfig& config() const { return config_; }
  const ShardSpec& spec() const { return *spec_; }
  // torch_dist: the opened checkpoint; null for the legacy format (rank files).
  const DistReader* dist() const { return dist_.get(); }
  // A torch_dist checkpoint's canonical tensor (vocabulary rows past config.json's dropped), in
  // `dtype`; `stored` as DistReader::read sets it. InputError naming .metadata when its key is
  // missing or its global shape disagrees with config.json.
  Tensor dist_tensor(const WeightRule& rule, DType dtype, DistReader::Stored* stored = nullptr) const;
  DistKey dist_shape_checked(const WeightRule& rule) const;

  struct Rank {
    std::shared_ptr<io::TorchFile> file;
    io::PyPtr model;
    std::string path;
  };
  // Opens every rank file of the layout (InputError naming a missing or unreadable one).
  void open_all() {
    for (const auto& r : spec_->rank_files()) {
      const Rank& rk = rank(r.tp, r.pp, r.ep);
      rk.file->mapped().drop_pages(0, rk.file->mapped().size());  // what reading the zip directory touched
    }
  }
  // The rank file of (tp, pp, ep), opened on first use.
  const Rank& rank(int tp, int pp, int ep);
  const io::TensorRef& ref(const Rank& r, const std::string& local) const {
    auto v = r.model->get(local);
    if (!v || v->kind != io::PyValue::kTensor) throw_input("{}: tensor '{}' is missing", r.path, local);
    return v->tensor;
  }
  // The canonical shape of a rule's tensor as stored (vocabulary padded).
  Shape stored_shape(const WeightRule& rule) const {
    Shape s = rule.shape;
    if (is_vocab_tensor(rule.mcore)) s[0] = spec_->padded_vocab();
    return s;
  }
  // Every piece of `rule` is present, with the shape the layout implies, inside its file (the
  // key and global shape for torch_dist).
  void check(const WeightRule& rule);

 private:
  std::filesystem::path dir_, iter_dir_;
  ModelConfig config_;
  std::unique_ptr<ShardSpec> spec_;
  std::unique_ptr<DistReader> dist_;
  std::map<std::string, Rank> ranks_;  // rank dir -> opened file
};

}  // namespace moe::checkpoint
