// Megatron's performance knobs, accepted by pt/sft so that swift command lines run verbatim: each
// tunes a GPU kernel choice (fusions, attention backend, grouped GEMM, ...) and changes no result.
// On the CPU they change nothing; their values are still checked (a typo is an error, as in
// swift), recorded in args.json, and listed under --verbose true. The CUDA backend will honour
// the ones it can.
#pragma once
#include <map>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

namespace moectl {

struct MegatronKnobs {
  bool verbose = false;
  std::map<std::string, bool> flags;         // boolean knobs, by flag name (no dashes)
  std::map<std::string, int64_t> counts;     // integer knobs
  std::map<std::string, std::string> names;  // enumerated knobs
  std::map<std::string, std::string> later;  // features moectl does not have yet, by flag
  std::vector<std::string> report_to;        // --report_to tensorboard (others: not yet)
};

// Declares every knob on `c` (values land in `k`, which must outlive parsing).
void add_megatron_knobs(CLI::App* c, MegatronKnobs& k);
// The knobs given on the command line, for args.json; one info line each under --verbose.
nlohmann::json given_knobs(const CLI::App& c, const MegatronKnobs& k);
// InputError (one line, exit 2) for a feature moectl does not have yet (LoRA, FP8, wandb), rather
// than training without it; called before any work.
void refuse_missing_features(const CLI::App& c, const MegatronKnobs& k);

}  // namespace moectl
