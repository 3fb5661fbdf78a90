#include "dist/process_groups.h"

#include <array>

#include "core/error.h"
#include "dist/local_communicator.h"

namespace moe::dist {
namespace {

// One view of the world as a grid of five axes in Megatron's order tp, cp, ep, dp, pp, the first
// varying fastest: rank = sum(coord[i] * stride[i]). A group holds the ranks that agree on every
// axis outside `inside`; groups are numbered over the outside axes, members over the inside ones,
// both first axis fastest.
std::vector<std::vector<int>> grid_groups(const std::array<int, 5>& sizes, const std::array<bool, 5>& inside) {
  std::array<int, 5> stride{};
  int world = 1;
  for (size_t i = 0; i < sizes.size(); ++i) stride[i] = world, world *= sizes[i];
  // Walks the axes selected by `want` with `index` as a mixed-radix number: its rank offset.
  auto offset = [&](int index, bool want) {
    int off = 0;
    for (size_t i = 0; i < sizes.size(); ++i)
      if (inside[i] == want) off += (index % sizes[i]) * stride[i], index /= sizes[i];
    return off;
  };
  int group_size = 1;
  for (size_t i = 0; i < sizes.size(); ++i)
    if (inside[i]) group_size *= sizes[i];
  std::vector<std::vector<int>> groups(size_t(world / group_size));
  for (size_t g = 0; g < groups.size(); ++g)
    for (int m = 0; m < group_size; ++m) groups[g].push_back(offset(int(g), false) + offset(m, true));
  return groups;
}

}  // namespace

const char* group_name(Group g) {
  switch (g) {
    case Group::kTp: return "tp";
    case Group::kCp: return "cp";
    case Group::kDp: return "dp";
    case Group::kDpCp: return "dp_cp";
    case Group::kEp: return "ep";
    case Group::kEtp: return "etp";
    case Group::kEdp: return "edp";
    case Group::kPp: return "pp";
    case Group::kEmbedding: return "embedding";
  }
  return "?";
}

std::vector<std::vector<int>> group_ranks(const ParallelLayout& l, Group g) {
  MOE_ASSERT(l.invalid_reason().empty(), "group_ranks of an invalid layout: {}", l.invalid_reason());
  // Attention/dense view (ep axis 1) and the MoE view (cp axis 1, tp axis = etp, dp axis = edp) of
  // the same ranks; both share the pp axis, so a stage is the same ranks in both.
  const std::array<int, 5> dense{l.tp, l.cp, 1, l.dp, l.pp}, expert{l.etp, 1, l.ep, l.edp(), l.pp};
  constexpr bool T = true, F = false;
  switch (g) {
    case Group::kTp: return grid_groups(dense, {T, F, F, F, F});
    case Group::kCp: return grid_groups(dense, {F, T, F, F, F});
    case Group::kDp: return grid_groups(dense, {F, F, F, T, F});
    case Group::kDpCp: return grid_groups(dense, {F, T, F, T, F});
    case Group::kPp: return grid_groups(dense, {F, F, F, F, T});
    case Group::kEtp: return grid_groups(expert, {T, F, F, F, F});
    case Group::kEp: return grid_groups(expert, {F, F, T, F, F});
    case Group::kEdp: return grid_groups(expert, {F, F, F, T, F});
    case Group::kEmbedding: {
      // Megatron: the first and last stage of each pipeline share the tied embedding's gradient.
      // The middle stages hold neither; each is a group of one so that every rank has a group.
      std::vector<std::vector<int>> out;
      for (const auto& pipe : grid_groups(dense, {F, F, F, F, T})) {
        if (pipe.size() == 1) {
          out.push_back(pipe);
          continue;
        }
        out.push_back({pipe.front(), pipe.back()});
        for (size_t s = 1; s + 1 < pipe.size(); ++s) out.push_back({pipe[s]});
      }
      return out;
    }
  }
  return {};
}

ProcessGroups::ProcessGroups(const ParallelLayout& layout, Communicator& world) : layout_(layout) {
  layout.validate();
  if (layout.world() != world.size())
    throw_input("the layout {} needs {} ranks (tensor x pipeline x context x data parallel) but the job has {}",
                to_string(layout), layout.world(), world.size());
  for (Group g : kAllGroups) {
    const auto groups = group_ranks(layout, g);
    int color = -1, key = -1;
    for (size_t i = 0; i < groups.size() && color < 0; ++i)
      for (size_t k = 0; k < groups[i].size(); ++k)
        if (groups[i][k] == world.rank()) color = int(i), key = int(k);
    MOE_ASSERT(color >= 0, "rank {} is in no {} group of {}", world.rank(), group_name(g), to_string(layout));
    auto c = world.split(color, key, group_name(g));
    MOE_ASSERT(c->size() == int(groups[size_t(color)].size()) && c->rank() == key,
               "split of {} gave rank {} of {}, expected {} of {}", group_name(g), c->rank(), c->size(), key,
               groups[size_t(color)].size());
    groups_.push_back(std::move(c));
  }
}

ProcessGroups ProcessGroups::local() {
  LocalCommunicator world;
  return ProcessGroups(ParallelLayout{}, world);
}

}  // namespace moe::dist
