// What a collective costs between this job's ranks on this machine, for the planner's model of
// moectl's CPU engine (plan/moectl_cpu_job.h): `moectl plan --cpu_probe_links` runs it under
// mpirun with the job's rank count, and the numbers feed --cpu_collective_latency_ms and
// --cpu_link_gbps. Ranks of a training job meet in a collective after a stretch of compute, so
// the rendezvous is measured that way: on a loaded machine a rank that was descheduled makes the
// others wait, which an idle ping-pong would not show.
#pragma once
#include "dist/communicator.h"

namespace moe::dist {

struct LinkCost {
  double latency_s = 0;    // one activation-sized collective after a stretch of compute, payload included
  double bytes_per_s = 0;  // payload rate of a large all-reduce (2 (n-1)/n of the buffer per rank)
};

// A collective over `world` (every rank calls it); the same result on every rank.
LinkCost probe_links(Communicator& world);

}  // namespace moe::dist
