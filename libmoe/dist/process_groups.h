// ProcessGroups: the communicators one rank needs, generated from a ParallelLayout in
// Megatron-Core's rank order, and passed explicitly to the layers that communicate (there is no
// global parallel state). With one process every group is a LocalCommunicator.
//
// Rank order (Megatron's RankGenerator, order tp-cp-ep-dp-pp, first fastest): attention and dense
// layers see a rank as (tp, cp, dp, pp) coordinates, MoE layers see the same rank as (etp, ep, edp,
// pp). So TP neighbours are adjacent ranks, pipeline stages are world/pp apart, and expert groups
// fold into the tp x cp x dp ranks of a stage.
#pragma once
#include <memory>
#include <vector>

#include "dist/communicator.h"
#include "dist/parallel_layout.h"

namespace moe::dist {

enum class Group {
  kTp,         // tensor parallel: attention heads, dense MLP, vocabulary
  kCp,         // context parallel: sequence chunks of attention
  kDp,         // data parallel of dense parameters (without cp)
  kDpCp,       // data x context parallel: where dense gradients are reduced when cp > 1
  kEp,         // expert parallel: token dispatch all-to-all
  kEtp,        // expert tensor parallel
  kEdp,        // expert data parallel: where expert gradients are reduced
  kPp,         // one pipeline: the ranks of the stages, first to last
  kEmbedding,  // first and last stage of a pipeline (tied embedding gradients); middle stages alone
};
constexpr Group kAllGroups[] = {Group::kTp,  Group::kCp,  Group::kDp, Group::kDpCp,     Group::kEp,
                                Group::kEtp, Group::kEdp, Group::kPp, Group::kEmbedding};
const char* group_name(Group g);  // "tp", "cp", "dp", "dp_cp", "ep", "etp", "edp", "pp", "embedding"

// Every group of kind `g` of a valid layout, each the world ranks in group-rank order, the groups in
// Megatron's order (the embedding kind: each pipeline's first-last pair, then its middle stages
// one by one). Every rank of the world is in exactly one group of each kind.
std::vector<std::vector<int>> group_ranks(const ParallelLayout& l, Group g);

class ProcessGroups {
 public:
  // Splits `world` into this rank's group of every kind: a collective, so every rank of `world`
  // calls it at start-up with the same layout. InputError when the layout is invalid or needs
  // another world size than world.size() (naming the flags).
  ProcessGroups(const ParallelLayout& layout, Communicator& world);
  // One process: the single-rank layout, every group local.
  static ProcessGroups local();

  const ParallelLayout& layout() const { return layout_; }
  Communicator& get(Group g) const { return *groups_[size_t(g)]; }
  Communicator& tp() const { return get(Group::kTp); }
  Communicator& cp() const { return get(Group::kCp); }
  Communicator& dp() const { return get(Group::kDp); }
  Communicator& dp_cp() const { return get(Group::kDpCp); }
  Communicator& ep() const { return get(Group::kEp); }
  Communicator& etp() const { return get(Group::kEtp); }
  Communicator& edp() const { return get(Group::kEdp); }
  Communicator& pp() const { return get(Group::kPp); }
  Communicator& embedding() const { return get(Group::kEmbedding); }

 private:
  ParallelLayout layout_;
  std::vector<std::unique_ptr<Communicator>> groups_;  // indexed by Group
};

}  // namespace moe::dist
