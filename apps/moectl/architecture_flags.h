// Megatron's architecture flags (--num_layers, --hidden_size, --num_experts, ...). Megatron-SWIFT 4.x
// reads the architecture from config.json and 3.x users still pass them out of habit: moectl
// accepts each one and checks it against the model's config. An equal value is fine; a different
// one is an error naming the flag, both values and the file, since training another shape than
// the checkpoint's is never what was meant.
#pragma once
#include <map>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "model/model_config.h"

namespace moectl {

struct ArchitectureFlags {
  std::map<std::string, double> numbers;
  std::map<std::string, bool> switches;
};

void add_architecture_flags(CLI::App* c, ArchitectureFlags& f);
// InputError for the first flag given that disagrees with `config` (read from `config_file`);
// returns the flags given, for args.json.
nlohmann::json check_architecture_flags(const CLI::App& c, const ArchitectureFlags& f,
                                        const moe::model::ModelConfig& config, const std::string& config_file);

}  // namespace moectl
