// The library's only way to print: a spdlog logger writing to stderr. apps/ sets the level
// (--verbose); tests leave it at warn.
#pragma once
#include <spdlog/spdlog.h>

namespace moe {
spdlog::logger& log();
void set_log_level(spdlog::level::level_enum level);
}  // namespace moe
