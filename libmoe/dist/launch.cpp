#include "dist/launch.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "core/error.h"

namespace moe::dist {

namespace {

// The leading integer of variable `name` (Slurm writes "2(x3)"); `fallback` when unset.
int env_int(const char* name, int fallback, int min_value) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  if (end == v || n < min_value || n > (1 << 24))
    throw_input("environment variable {}='{}' is not an integer >= {}", name, v, min_value);
  return int(n);
}

bool has_env(const char* name) { return std::getenv(name) != nullptr; }

int hardware_cores() { return std::max(1, int(std::thread::hardware_concurrency())); }

// `prog` on PATH, or "".
std::string find_on_path(const std::string& prog) {
  const char* path = std::getenv("PATH");
  if (!path) return "";
  std::string p = path;
  for (size_t b = 0; b <= p.size();) {
    size_t e = p.find(':', b);
    if (e == std::string::npos) e = p.size();
    const std::filesystem::path cand = std::filesystem::path(p.substr(b, e - b)) / prog;
    if (e > b && access(cand.c_str(), X_OK) == 0) return cand.string();
    b = e + 1;
  }
  return "";
}

}  // namespace

LaunchEnv launch_env() {
  LaunchEnv e;
  if (has_env("OMPI_COMM_WORLD_SIZE")) {
    e.launcher = "mpirun";
    e.world_size = env_int("OMPI_COMM_WORLD_SIZE", 1, 1);
    e.rank = env_int("OMPI_COMM_WORLD_RANK", 0, 0);
    e.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0, 0);
    e.local_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", 1, 1);
  } else if (has_env("SLURM_PROCID") && (has_env("PMIX_RANK") || has_env("PMI_RANK"))) {
    e.launcher = "srun";
    e.world_size = env_int("SLURM_NTASKS", 1, 1);
    e.rank = env_int("SLURM_PROCID", 0, 0);
    e.local_rank = env_int("SLURM_LOCALID", 0, 0);
    e.local_size = env_int("SLURM_NTASKS_PER_NODE", env_int("SLURM_STEP_NUM_TASKS", 1, 1), 1);
  } else if (has_env("PMI_SIZE")) {
    e.launcher = "pmi";
    e.world_size = env_int("PMI_SIZE", 1, 1);
    e.rank = env_int("PMI_RANK", 0, 0);
    e.local_rank = env_int("MPI_LOCALRANKID", 0, 0);
    e.local_size = env_int("MPI_LOCALNRANKS", 1, 1);
  }
  if (e.rank >= e.world_size) throw_input("the launcher gave rank {} of a world of {} processes", e.rank, e.world_size);
  return e;
}

std::optional<std::vector<std::string>> self_launch_command(int argc, char** argv) {
  if (!has_env("NPROC_PER_NODE") || !launch_env().launcher.empty()) return std::nullopt;
  const int n = env_int("NPROC_PER_NODE", 1, 1);
  if (env_int("NNODES", 1, 1) > 1)
    throw_input(
        "NNODES={}: moectl starts the processes of one machine itself; start a multi-node job with mpirun "
        "or srun (moectl reads rank and world size from them)",
        std::getenv("NNODES"));
  const std::string mpirun = find_on_path("mpirun");
  if (mpirun.empty())
    throw_input("NPROC_PER_NODE={} starts the processes with mpirun, which is not on PATH (apt install openmpi-bin)",
                n);
  std::error_code ec;
  std::string self = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  if (ec) self = argv[0];
  std::vector<std::string> cmd = {mpirun, "-np", std::to_string(n)};
  if (geteuid() == 0) cmd.push_back("--allow-run-as-root");  // containers run as root, as with torchrun
  if (n > hardware_cores()) cmd.push_back("--oversubscribe");
  // Threads are moectl's to place (threads_per_rank); mpirun's default binds a rank to one core.
  cmd.insert(cmd.end(), {"--bind-to", "none", self});
  for (int i = 1; i < argc; ++i) cmd.emplace_back(argv[i]);
  return cmd;
}

int threads_per_rank(const LaunchEnv& env) {
  if (has_env("OMP_NUM_THREADS") || env.local_size <= 1) return 0;
  return std::max(1, hardware_cores() / env.local_size);
}

}  // namespace moe::dist
