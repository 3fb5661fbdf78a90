// Layout: one candidate way to train a model on a cluster (parallel sizes, micro-batch,
// recompute), TrainingOptions: what the user fixed about the run. Layouts have a text form
// used by --explain/--why_not:  tp2,pp4,vpp1,ep8,etp1,cp1,dp4,mbs1,recompute=full
// (any subset, in any order; missing keys default: sizes 1, etp = tp, dp from the world size).
#pragma once
#include <optional>
#include <string>

#include "dist/parallel_layout.h"
#include "model/train_options.h"

namespace moe::plan {

// One recompute vocabulary for the trainer and the planner (model/train_options.h).
using model::parse_recompute;
using model::Recompute;
using model::to_string;

// The parallel sizes are the engine's and export's own type (tp, pp, vpp, ep, etp, cp, dp, world(),
// edp()); the search adds what Megatron also chooses per run. Candidates the search rejects are
// still Layouts: invalid_reason() (layout_search.h) says why, with the model and cluster in view.
struct Layout : dist::ParallelLayout {
  int micro_batch_size = 1;
  Recompute recompute = Recompute::kNone;
  bool sequence_parallel = false;  // on whenever tp > 1 unless the user turned it off
  bool operator==(const Layout&) const = default;
};

// tp2,pp4,vpp1,ep8,etp1,cp1,dp4,mbs1,recompute=full (canonical order, every key).
std::string to_string(const Layout& l);
// Parses the text form. `world` (if > 0) derives dp when it is not given; `default_mbs` and
// `default_recompute` fill those keys. InputError naming `flag` and the bad key.
Layout parse_layout(const std::string& text, const std::string& flag, int world, int default_mbs,
                    Recompute default_recompute);

enum class Precision { kBf16, kFp8, kFp32 };
// alltoall: NCCL all-to-all over EP; allgather: every rank gathers the EP x ETP group's tokens;
// flex: DeepEP, which sends a token once per remote node and forwards it over NVLink there.
enum class Dispatcher { kAllToAll, kAllGather, kFlex };

// What trains: Megatron-Core on GPUs (the default: flash attention, bf16/fp8/fp32, allowances
// for the CUDA context, NCCL and the caching allocator), or moectl's own CPU engine
// (libmoe/model/train_model.cpp) on one process: fp32 weights, grads and Adam states, the
// tensors its modules keep for the backward, an LM head chunked over tokens, and a measured
// process baseline (binary, OpenBLAS buffers, tokenizer, data) as the only `other`.
enum class Engine { kMegatron, kMoectlCpu };

struct TrainingOptions {
  Engine engine = Engine::kMegatron;
  double cpu_process_bytes = 0;  // kMoectlCpu: RSS of the process before the model exists
  int cpu_threads = 1;           // kMoectlCpu: worker threads (each keeps attention workspaces)
  int64_t seq_length = 4096;
  int64_t global_batch_size = 1024;
  bool use_distributed_optimizer = true;
  Precision precision = Precision::kBf16;
  Dispatcher dispatcher = Dispatcher::kAllToAll;
  double moe_expert_capacity_factor = 0;  // 0 = dropless
  // Dropless routing: the most-loaded EP rank gets more than the mean number of tokens; this
  // factor scales every token-proportional expert term in memory (capacity factor if set).
  double moe_imbalance_factor = 1.1;
  bool allow_sequence_parallel = true;
  int make_vocab_size_divisible_by = 128;
  double expert_tokens_factor() const {
    return moe_expert_capacity_factor > 0 ? moe_expert_capacity_factor : moe_imbalance_factor;
  }
};

}  // namespace moe::plan
