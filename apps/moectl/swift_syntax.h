// Command lines as swift's parser (HfArgumentParser) reads them, rewritten into what CLI11 takes:
// `--micro-batch-size` is `--micro_batch_size` (Megatron-LM's spelling), and a boolean flag
// given bare (`--packing`, followed by nothing or by another flag) means true. A flag given twice
// keeps its last value (main.cpp's policy). Values are never rewritten.
#pragma once
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace moectl {

// argv[0 .. argc) rewritten for `app`, whose subcommands are already declared.
std::vector<std::string> swift_argv(CLI::App& app, int argc, char** argv);

}  // namespace moectl
