// How a moectl process was started, read from the launcher's environment (mpirun, srun), and
// swift's way of starting a job (NPROC_PER_NODE=N moectl sft ...) turned into an mpirun line, so
// users type the same command as with swift and the same job runs under any of them.
#pragma once
#include <optional>
#include <string>
#include <vector>

namespace moe::dist {

struct LaunchEnv {
  int world_size = 1, rank = 0;
  int local_rank = 0, local_size = 1;  // among the ranks on this machine
  std::string launcher;                // "mpirun", "srun", "pmi"; "" when started alone
  bool distributed() const { return world_size > 1; }
};

// From OMPI_COMM_WORLD_* (mpirun), SLURM_* with PMIX_RANK or PMI_RANK (srun), or PMI_* (Hydra).
// InputError naming the variable when one is set but malformed.
LaunchEnv launch_env();

// NPROC_PER_NODE=N outside a launcher: the argv of `mpirun -np N ... <this binary> args...` that
// starts the job, with one OpenMP thread per core share. nullopt when the variable is unset, or
// when already under a launcher. InputError for a bad value, for NNODES > 1 (start multi-node jobs
// with mpirun or srun), or when mpirun is not installed.
std::optional<std::vector<std::string>> self_launch_command(int argc, char** argv);

// OpenMP threads for one rank when several share this machine: the cores split evenly (at least
// one), unless OMP_NUM_THREADS says otherwise. 0: leave the default.
int threads_per_rank(const LaunchEnv& env);

}  // namespace moe::dist
