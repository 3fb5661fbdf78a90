// moectl: one binary, swift-style subcommands. Errors from the library arrive here as
// moe::Error and are printed as one line; exit 2 for bad input, 1 for internal failures.
#include <cstdio>
#include <exception>

#include "commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"moectl: Mixture-of-Experts models in native code (export, pt, sft, infer, plan)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "moectl 0.1.0");
  moectl::add_infer_command(app);
  moectl::add_tokenize_command(app);
  moectl::add_init_command(app);
  moectl::add_export_command(app);
  moectl::add_pt_command(app);
  moectl::add_sft_command(app);
  moectl::add_plan_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  } catch (const moe::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "moectl: error: %s\n", e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "moectl: internal error: %s\n", e.what());
    return 1;
  }
  return 0;
}
