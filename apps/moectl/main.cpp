// moectl: one binary, swift-style subcommands. Errors from the library arrive here as
// moe::Error and are printed as one line; exit 2 for bad input, 1 for internal failures.
// Command-line mistakes get the same treatment: one `moectl: error: ...` line, exit 2.
// As one rank of a job (mpirun, srun), an error ends every rank (the others would wait in a
// collective), messages name the rank, and only rank 0 logs warnings and info.
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "commands.h"
#include "core/cpu_features.h"
#include "core/error.h"
#include "core/log.h"
#include "core/parallel.h"
#include "dist/launch.h"
#include "dist/mpi_communicator.h"
#include "swift_syntax.h"

namespace {

std::string command_list(CLI::App& app) {
  std::string s;
  for (const CLI::App* c : app.get_subcommands([](CLI::App*) { return true; }))
    s += (s.empty() ? "" : ", ") + c->get_name();
  return s;
}

moe::dist::LaunchEnv g_launch;  // how this process was started

// "moectl: error: ..." (prefixed with the rank in a job); the return value is the exit code, and
// in a job it ends every rank.
int fail(const char* kind, const std::string& line, int code) {
  std::fflush(stdout);
  if (g_launch.distributed()) {
    std::fprintf(stderr, "moectl: %s (rank %d of %d): %s\n", kind, g_launch.rank, g_launch.world_size, line.c_str());
    std::fflush(stderr);
    moe::dist::MpiCommunicator::abort_job(code);
  }
  std::fprintf(stderr, "moectl: %s: %s\n", kind, line.c_str());
  return code;
}

int usage_error(const std::string& line) { return fail("error", line, 2); }

// NPROC_PER_NODE=N moectl pt|sft ... (swift's torchrun variables): the job is started through
// mpirun, replacing this process. Returns only when there is nothing to start.
void self_launch(int argc, char** argv) {
  if (argc < 2 || (std::strcmp(argv[1], "pt") != 0 && std::strcmp(argv[1], "sft") != 0)) return;
  const auto cmd = moe::dist::self_launch_command(argc, argv);
  if (!cmd) return;
  std::vector<char*> args;
  std::string line;  // swift prints the launch line it runs the same way
  for (const auto& a : *cmd) {
    args.push_back(const_cast<char*>(a.c_str()));
    if (!line.empty()) line += ' ';
    line += a;
  }
  args.push_back(nullptr);
  std::fprintf(stderr, "run sh: `%s`\n", line.c_str());
  std::fflush(stdout);
  execv(args[0], args.data());
  moe::throw_input("could not start {}: {}", (*cmd)[0], std::strerror(errno));
}

// One line for a CLI11 parse error, naming the command the user was running and where its
// help is, in place of CLI11's wording (written for its own test suite more than for users).
std::string parse_error_line(CLI::App& app, const CLI::ParseError& e) {
  const auto parsed = app.get_subcommands();
  const std::string cmd = parsed.empty() ? "moectl" : "moectl " + parsed.back()->get_name();
  const std::string see = " (see " + cmd + " --help)";
  if (dynamic_cast<const CLI::ExtrasError*>(&e)) {
    const auto rest = app.remaining(true);
    for (const auto& r : rest)
      if (r.size() > 1 && r[0] == '-') return fmt::format("unknown flag {} for '{}'{}", r, cmd, see);
    return fmt::format("unexpected argument '{}' for '{}'{}", rest.empty() ? std::string("?") : rest.front(), cmd, see);
  }
  if (parsed.empty() && dynamic_cast<const CLI::RequiredError*>(&e))
    return "a command is required: " + command_list(app) + " (see moectl --help)";
  std::string msg = e.what();
  for (auto& ch : msg)
    if (ch == '\n' || ch == '\r') ch = ' ';
  return msg + see;
}

}  // namespace

static int run_main(int argc, char** argv) {
  try {
    // MOE_CPU_ISA is read here, where a bad value ends in one line, not at the first kernel
    // call (which may sit inside a parallel region).
    moe::cpu_isa();
    g_launch = moe::dist::launch_env();
    self_launch(argc, argv);
  } catch (const moe::Error& e) {
    return fail("error", e.what(), e.exit_code());
  }
  if (const int n = moe::dist::threads_per_rank(g_launch)) moe::set_num_threads(n);
  if (g_launch.rank != 0) moe::set_log_level(spdlog::level::err);  // rank 0 speaks for the job
  CLI::App app{"moectl: Mixture-of-Experts models in native code (export, pt, sft, infer, plan)"};
  // swift's argparse semantics: a flag given twice keeps its last value. Set before the
  // subcommands exist, which copy these defaults; list options (--dataset a b) keep every value
  // whatever the policy, as their expected count is unbounded.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.require_subcommand(1);
  app.set_version_flag("--version", "moectl 0.1.0");
  moectl::add_infer_command(app);
  moectl::add_tokenize_command(app);
  moectl::add_init_command(app);
  moectl::add_export_command(app);
  moectl::add_pt_command(app);
  moectl::add_sft_command(app);
  moectl::add_plan_command(app);
  // CLI11 reads an unknown command as a stray argument and only says a subcommand is required.
  if (argc >= 2 && argv[1][0] != '-') {
    const std::string name = argv[1];
    bool known = false;
    for (const CLI::App* c : app.get_subcommands([](CLI::App*) { return true; })) known |= c->check_name(name);
    if (!known) return usage_error("unknown command '" + name + "'; the commands are " + command_list(app));
  }
  // swift's spellings: --a-b for --a_b, a bare boolean flag for true.
  const std::vector<std::string> args = moectl::swift_argv(app, argc, argv);
  std::vector<char*> arg_ptrs;
  arg_ptrs.reserve(args.size());
  for (const auto& a : args) arg_ptrs.push_back(const_cast<char*>(a.c_str()));
  try {
    app.parse(int(arg_ptrs.size()), arg_ptrs.data());
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    return usage_error(parse_error_line(app, e));
  } catch (const moe::Error& e) {
    return fail("error", e.what(), e.exit_code());
  } catch (const std::exception& e) {
    return fail("internal error", e.what(), 1);
  }
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run_main(argc, argv);
  } catch (const std::exception& e) {  // before the parse's own handlers (building the commands)
    return fail("internal error", e.what(), 1);
  }
}
