// Conversion between a Hugging Face model directory and Megatron-Core's legacy `torch`
// checkpoint layout (reference/megatron-format.md section 1), as `swift export --to_mcore /
// --to_hf` does: iter_0000001/mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt per rank, split by
// ShardSpec, and merged back from any such layout. export_to_mcore.cpp writes, mcore_reader.cpp
// reads (load_mcore_model, load_model), export_to_hf.cpp streams a Megatron dir back to HF.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/load_hf.h"
#include "checkpoint/torch_dist.h"
#include "core/dtype.h"
#include "io/pickle.h"
#include "model/shard_spec.h"

namespace moe::checkpoint {

struct ExportOptions {
  // Weights as written; unset: the source's own (config.json's torch_dtype), as swift does.
  std::optional<DType> dtype;
  int make_vocab_size_divisible_by = 128;  // Megatron pads the vocabulary to a multiple of this
  bool overwrite = false;
  dist::ParallelLayout layout;                   // ranks to shard for (--to_mcore); read back from args.json (--to_hf)
  uint64_t max_shard_bytes = uint64_t(5) << 30;  // HF side: --max_shard_size
  CkptFormat format = CkptFormat::kTorchDist;    // --ckpt_format (--to_mcore), Megatron's default
  int thread_count = 2;                          // torch_dist: .distcp files written at once
  // Called after each tensor written (bytes and tensors done / total), e.g. to draw a bar.
  std::function<void(uint64_t bytes_done, uint64_t bytes_total, int tensors_done, int tensors_total)> progress;
};

// HF dir, or a Megatron dir in either format (recognised by its latest_checkpointed_iteration.txt)
// -> Megatron dir in opt.format (tracker file written last; the whole directory renamed into place).
void export_hf_to_mcore(const std::string& src_dir, const std::string& out_dir, const ExportOptions& opt);
// The canonical state of a Megatron dir (any layout written above), merged, in `dtype`.
LoadedModel load_mcore_model(const std::string& mcore_dir, DType dtype);
// An HF directory, or a Megatron one (recognised by its latest_checkpointed_iteration.txt;
// weights kept in config.json's torch_dtype).
LoadedModel load_model(const std::string& dir);
// Megatron dir (as written above, with its config.json) -> HF dir.
void export_mcore_to_hf(const std::string& mcore_dir, const std::string& out_dir, const ExportOptions& opt);

// Pieces shared with the trainer's checkpoints (libmoe/train/checkpoint.h):
// Megatron's argument namespace for this model and layout (what Megatron-LM reads back);
io::PyPtr megatron_args(const model::ModelConfig& c, const ExportOptions& opt, const model::ShardSpec& spec);
// the `_extra_state` entries of layer `layer` in a TransformerEngine-spec GPTModel;
std::vector<std::string> te_extra_states(const model::ModelConfig& c, int layer);
// The iteration named by DIR/latest_checkpointed_iteration.txt; InputError naming the file when
// it is missing or not a plain number.
int64_t read_checkpoint_tracker(const std::string& mcore_dir);

// config.json (torch_dtype set to `dtype`), generation_config.json and tokenizer files.

void copy_side_files(const std::filesystem::path& from, const std::filesystem::path& to, DType dtype,
                     const model::ModelConfig& c);

}  // namespace moe::checkpoint
