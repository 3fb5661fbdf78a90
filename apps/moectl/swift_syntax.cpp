#include "swift_syntax.h"

#include <algorithm>

namespace moectl {

namespace {

bool is_flag(const std::string& s) { return s.size() > 2 && s[0] == '-' && s[1] == '-'; }

// The boolean options of command `cmd` (long names without the dashes).
std::vector<std::string> boolean_options(CLI::App& app, const std::string& cmd) {
  std::vector<std::string> out;
  for (CLI::App* c : app.get_subcommands([](CLI::App*) { return true; })) {
    if (!c->check_name(cmd)) continue;
    for (const CLI::Option* o : c->get_options())
      if (o->get_type_name() == "BOOLEAN")
        for (const auto& n : o->get_lnames()) out.push_back(n);
  }
  return out;
}

}  // namespace

std::vector<std::string> swift_argv(CLI::App& app, int argc, char** argv) {
  std::vector<std::string> out(argv, argv + argc);
  const auto bools = argc >= 2 ? boolean_options(app, argv[1]) : std::vector<std::string>{};
  for (size_t i = 1; i < out.size(); ++i) {
    std::string& a = out[i];
    if (!is_flag(a)) continue;
    const size_t eq = a.find('=');  // --flag=value: only the name is respelled
    std::replace(a.begin() + 2, eq == std::string::npos ? a.end() : a.begin() + std::ptrdiff_t(eq), '-', '_');
    const std::string name = a.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    const bool bare = eq == std::string::npos && (i + 1 == out.size() || is_flag(out[i + 1]));
    if (bare && std::find(bools.begin(), bools.end(), name) != bools.end())
      out.insert(out.begin() + std::ptrdiff_t(++i), "true");
  }
  return out;
}

}  // namespace moectl
