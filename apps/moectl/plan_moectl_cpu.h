// `moectl plan --moectl_cpu_layout LAYOUT` and `--cpu_probe_links`: the planner's model of moectl's
// own CPU engine as an mpirun job (plan/moectl_cpu_job.h) printed as JSON, and the measurement of
// this machine's links between ranks that calibrates it. plan.cpp parses the flags.
#pragma once
#include <optional>
#include <string>

#include "model/model_config.h"
#include "plan/layout.h"

namespace moectl {

struct MoectlCpuPlanArgs {
  moe::plan::Layout layout;  // parsed and checked against the world size
  int64_t seq_length = 0, global_batch_size = 0;
  bool distributed_optimizer = true;
  int threads = 1;
  std::optional<double> step_s, link_gbps, latency_ms;  // the calibration (--cpu_*)
};

// Prints {"layout", "ranks": [{rank, coordinates, memory_mib, time_s}], "step_s"} (time only with
// a calibration step time).
void print_moectl_cpu_plan(const moe::model::ModelConfig& c, const MoectlCpuPlanArgs& a);

// Under mpirun: every rank measures, rank 0 prints {"collective_latency_ms", "link_gbps"}.
void print_cpu_link_probe();

}  // namespace moectl
