// NcclProcessGroups: the NCCL communicators of every process group of a ParallelLayout, created
// eagerly at start-up (issue 13): a world communicator bootstrapped over the MPI world, then one
// split per group kind in the fixed order of kAllGroups on every rank (ProcessGroups' order), then
// one barrier per group in that order, so every communicator has been used once before training
// starts. Creating communicators lazily, mid-run, on the ranks that happen to need them first is a
// known cause of hangs in large MoE jobs; nothing here is created later.
//
// The host-buffer groups (MPI) stay as they are: a GPU run keeps both, the MPI ProcessGroups for
// host values (counts, statistics, strings) and these for device buffers.
#pragma once
#include <memory>

#include "dist/nccl_communicator.h"
#include "dist/process_groups.h"

namespace moe::dist {

class NcclProcessGroups {
 public:
  // A collective over `bootstrap_world` (every rank calls it at start-up with the same layout, after
  // the same earlier collectives): InputError when the layout is invalid or needs another world size
  // (before any NCCL communicator is made), InternalError when NCCL or CUDA fails (see
  // NcclCommunicator::create). `device` and `stream` as in NcclCommunicator::create; every group
  // queues on that one stream.
  NcclProcessGroups(const ParallelLayout& layout, Communicator& bootstrap_world, int device, void* stream);

  const ParallelLayout& layout() const { return groups_.layout(); }
  NcclCommunicator& world() const { return *world_; }
  // Every group, as ProcessGroups gives them (each an NcclCommunicator).
  const ProcessGroups& groups() const { return groups_; }
  Communicator& get(Group g) const { return groups_.get(g); }

 private:
  std::unique_ptr<NcclCommunicator> world_;  // declared first: made before, destroyed after the groups
  ProcessGroups groups_;
};

}  // namespace moe::dist
