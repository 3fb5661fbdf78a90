// Megatron's architecture flags (--num_layers, --hidden_size, --num_experts, ...). Megatron-SWIFT 4.x
// reads the architecture from config.json and 3.x users still pass them out of habit: moectl
// accepts each one and checks it against the model's config. An equal value is fine; a different
// one is an error naming the flag, both values and the file, since training another shape than
// the checkpoint's is never what was meant. Flags for what every moectl family fixes (RMSNorm,
// SwiGLU, RoPE, no linear biases, no dropout) are checked against that value, and
// --extra_megatron_kwargs (4.x: --megatron_extra_kwargs), a JSON object of Megatron flags, has
// each architecture key checked the same way.
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
  std::map<std::string, std::string> texts;  // names and JSON values (model_type, rope_scaling, ...)
  std::string extra_kwargs;                  // --extra_megatron_kwargs / --megatron_extra_kwargs
};

void add_architecture_flags(CLI::App* c, ArchitectureFlags& f);
// InputError for the first flag given that disagrees with `config` (read from `config_file`);
// returns the flags given, for args.json.
nlohmann::json check_architecture_flags(const CLI::App& c, const ArchitectureFlags& f,
                                        const moe::model::ModelConfig& config, const std::string& config_file);

}  // namespace moectl
