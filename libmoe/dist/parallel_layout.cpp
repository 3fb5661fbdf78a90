#include "dist/parallel_layout.h"

#include <tuple>

#include <fmt/format.h>

#include "core/error.h"

namespace moe::dist {

namespace {

// The rules that hold whatever the world size: every size positive, interleaving needs a pipeline.
std::string size_error(const ParallelLayout& l) {
  const auto [tp, pp, vpp, ep, etp, cp, dp] = std::tuple(l.tp, l.pp, l.vpp, l.ep, l.etp, l.cp, l.dp);
  const std::pair<const char*, int> sizes[] = {{"--tensor_model_parallel_size", tp},
                                               {"--pipeline_model_parallel_size", pp},
                                               {"--virtual_pipeline_model_parallel_size", vpp},
                                               {"--expert_model_parallel_size", ep},
                                               {"--expert_tensor_parallel_size", etp},
                                               {"--context_parallel_size", cp},
                                               {"the data-parallel size", dp}};
  for (const auto& [flag, v] : sizes)
    if (v < 1) return fmt::format("{} {}: must be >= 1", flag, v);
  if (vpp > 1 && pp == 1)
    return fmt::format(
        "--virtual_pipeline_model_parallel_size {} needs --pipeline_model_parallel_size > 1 "
        "(interleaving splits a pipeline)",
        vpp);
  return "";
}

}  // namespace

std::string ParallelLayout::invalid_reason() const {
  if (std::string why = size_error(*this); !why.empty()) return why;
  const int attn = tp * cp * dp;  // the ranks of one pipeline stage
  if (attn % (ep * etp) != 0)
    return fmt::format(
        "--expert_model_parallel_size {} x --expert_tensor_parallel_size {} = {} must divide the {} "
        "ranks of a pipeline stage (tensor {} x context {} x data {}): MoE layers fold the same ranks",
        ep, etp, ep * etp, attn, tp, cp, dp);
  return "";
}

void ParallelLayout::validate() const {
  if (std::string why = invalid_reason(); !why.empty()) throw InputError(why);
}

ParallelLayout ParallelLayout::from_flags(int world, int tp, int pp, int ep, int etp, int cp, int vpp) {
  if (world < 1) throw_internal("world size {} < 1", world);
  if (etp == 0) etp = tp;
  ParallelLayout l{tp, pp, vpp, ep, etp, cp, 1};
  if (std::string why = size_error(l); !why.empty()) throw InputError(why);
  const int mp = tp * pp * cp;
  if (world % mp != 0)
    throw_input(
        "--tensor_model_parallel_size {} x --pipeline_model_parallel_size {} x --context_parallel_size {} = {} "
        "does not divide the world size {}",
        tp, pp, cp, mp, world);
  l.dp = world / mp;
  l.validate();
  return l;
}

std::string to_string(const ParallelLayout& l) {
  return fmt::format("tp{},pp{},vpp{},ep{},etp{},cp{},dp{}", l.tp, l.pp, l.vpp, l.ep, l.etp, l.cp, l.dp);
}

}  // namespace moe::dist
