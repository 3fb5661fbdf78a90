#include "dist/nccl_process_groups.h"

#include "core/error.h"

namespace moe::dist {
namespace {

// The layout is checked before NCCL is entered, so a bad flag costs no communicator.
std::unique_ptr<NcclCommunicator> make_world(const ParallelLayout& layout, Communicator& bootstrap, int device,
                                             void* stream) {
  layout.validate();
  if (layout.world() != bootstrap.size())
    throw_input("the layout {} needs {} ranks (tensor x pipeline x context x data parallel) but the job has {}",
                to_string(layout), layout.world(), bootstrap.size());
  return NcclCommunicator::create(bootstrap, device, stream, "world");
}

}  // namespace

NcclProcessGroups::NcclProcessGroups(const ParallelLayout& layout, Communicator& bootstrap_world, int device,
                                     void* stream)
    : world_(make_world(layout, bootstrap_world, device, stream)), groups_(layout, *world_) {
  // ProcessGroups split the NCCL world once per kind in kAllGroups order (ncclCommSplit, a collective
  // over the world, or the unique-id fallback). One barrier per group, in the same order everywhere,
  // then makes NCCL connect each group now rather than in the middle of a step.
  for (Group g : kAllGroups) groups_.get(g).barrier();
}

}  // namespace moe::dist
