// Each subcommand lives in its own file and registers itself on the root CLI11 app with an
// add_<name>_command function. Callbacks throw moe::Error on bad input; main() prints it.
#pragma once
#include <CLI/CLI.hpp>

namespace moectl {
void add_infer_command(CLI::App& root);
void add_tokenize_command(CLI::App& root);
void add_init_command(CLI::App& root);
void add_export_command(CLI::App& root);
void add_pt_command(CLI::App& root);
void add_sft_command(CLI::App& root);
void add_plan_command(CLI::App& root);
}  // namespace moectl
