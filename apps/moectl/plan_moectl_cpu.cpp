#include "plan_moectl_cpu.h"

#include <cstdio>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "dist/launch.h"
#include "dist/link_probe.h"
#include "dist/mpi_communicator.h"
#include "plan/moectl_cpu_job.h"

namespace moectl {

namespace {

double mib(double b) { return b / (1024.0 * 1024.0); }

}  // namespace

void print_moectl_cpu_plan(const moe::model::ModelConfig& c, const MoectlCpuPlanArgs& a) {
  using namespace moe::plan;
  CpuJob job;
  job.layout = a.layout;
  job.micro_batch_size = a.layout.micro_batch_size;
  job.seq_length = a.seq_length, job.global_batch_size = a.global_batch_size;
  job.options.recompute.granularity = a.layout.recompute;  // selective: the trainer's default modules
  job.options.sequence_parallel = a.layout.sequence_parallel && a.layout.tp > 1;
  job.distributed_optimizer = a.distributed_optimizer;
  job.threads = a.threads;
  if (job.global_batch_size % (int64_t(job.micro_batch_size) * a.layout.dp) != 0)
    moe::throw_input("--global_batch_size {} must be a multiple of micro-batch {} x data-parallel {}",
                     job.global_batch_size, job.micro_batch_size, a.layout.dp);
  if (a.layout.vpp > 1 && job.micro_batches() % a.layout.pp != 0)
    moe::throw_input("--moectl_cpu_layout vpp{}: the {} micro-batches per pipeline must be a multiple of pp {}",
                     a.layout.vpp, job.micro_batches(), a.layout.pp);
  const std::vector<CpuRankMemory> mem = moectl_cpu_job_memory(c, job);
  std::vector<CpuRankTime> time;
  if (a.step_s) {
    CpuRates r;
    r.one_process_step_s = *a.step_s;
    if (a.link_gbps) r.link_gbps = *a.link_gbps;
    if (a.latency_ms) r.collective_latency_s = *a.latency_ms / 1e3;
    time = moectl_cpu_job_time(c, job, r);
  }
  nlohmann::json ranks = nlohmann::json::array();
  for (size_t i = 0; i < mem.size(); ++i) {
    const CpuRankMemory& m = mem[i];
    nlohmann::json j = {{"rank", m.rank}, {"tp", m.tp}, {"pp", m.pp},
                        {"ep", m.ep},     {"dp", m.dp}, {"parameters", m.params()}};
    j["memory_mib"] = {{"weights", mib(m.weights)},           {"gradients", mib(m.gradients)},
                       {"optimizer", mib(m.optimizer)},       {"activations", mib(m.activations)},
                       {"workspace", mib(m.workspace)},       {"kernels", mib(m.kernels)},
                       {"comm_buffers", mib(m.comm_buffers)}, {"training", mib(m.train())},
                       {"model_build", mib(m.load)},          {"peak", mib(m.peak())}};
    if (!time.empty()) {
      const CpuRankTime& t = time[i];
      j["time_s"] = {{"compute", t.compute_s},
                     {"optimizer", t.optimizer_s},
                     {"comm", t.comm_s},
                     {"bubble", t.bubble_s},
                     {"step", t.step_s}};
      j["collectives"] = t.collectives;
      j["comm_mb"] = t.comm_bytes / 1e6;
    }
    ranks.push_back(j);
  }
  nlohmann::json out = {{"layout", to_string(a.layout)},
                        {"engine", "moectl cpu (fp32, one thread per rank unless --cpu_threads)"},
                        {"memory", "growth of each rank's resident memory from before the weights exist"},
                        {"ranks", ranks},
                        {"step_s", time.empty() ? nlohmann::json(nullptr) : nlohmann::json(time[0].step_s)}};
  std::printf("%s\n", out.dump(2).c_str());
}

void print_cpu_link_probe() {
  if (!moe::dist::launch_env().distributed())
    moe::throw_input("--cpu_probe_links measures between ranks: run it under mpirun -np N (N >= 2)");
  auto world = moe::dist::MpiCommunicator::world();
  const moe::dist::LinkCost c = moe::dist::probe_links(*world);
  if (world->rank() == 0)
    std::printf("%s\n", nlohmann::json({{"ranks", world->size()},
                                        {"collective_latency_ms", c.latency_s * 1e3},
                                        {"link_gbps", c.bytes_per_s / 1e9}})
                            .dump()
                            .c_str());
}

}  // namespace moectl
