// Layout search: every valid layout of a model on a cluster (divisibility rules and
// Megatron's constraints, with MoE parallel folding), each with its memory and time estimate;
// those over the GPU's memory are excluded with the reason, the rest ranked by step time.
// Also answers "why not this layout" with suggestions of what does fit.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "plan/cluster.h"
#include "plan/layout.h"
#include "plan/memory_model.h"
#include "plan/model_shape.h"
#include "plan/time_model.h"

namespace moe::plan {

// Sizes the user fixed; unset ones are searched.
struct FixedSizes {
  std::optional<int> tp, pp, vpp, ep, etp, cp, dp, micro_batch_size;
  std::optional<Recompute> recompute;
  // With tp, pp, cp and ep fixed (dp follows) the answer is one layout.
  bool all_parallel_fixed() const { return tp && pp && cp && ep; }
};

// The first rule `l` breaks on this model, options and cluster (a sentence), or "" if valid.
std::string invalid_reason(const ModelShape& m, const Layout& l, const TrainingOptions& t, const Cluster& c);

struct Candidate {
  Layout layout;
  MemoryEstimate memory;
  TimeEstimate time;  // only computed for layouts that fit
  bool fits = false;
  std::string excluded_by;  // empty when it fits
  double peak_gib() const { return memory.peak().total() / kGiB; }
};

// What the search sorts by: step time, with near-ties (well under 2%) going to the simpler
// layout (less CP, fewer virtual stages, smaller micro-batch).
double ranking_key(const Candidate& c);

// Memory and time of one valid layout; excluded_by says how far over memory it is.
Candidate evaluate(const ModelShape& m, const Layout& l, const TrainingOptions& t, const Cluster& c);

struct SearchResult {
  std::vector<Candidate> fitting;   // fastest first
  std::vector<Candidate> excluded;  // over memory, least over first
  int64_t enumerated = 0;           // valid layouts considered
  int64_t fitting_count = 0;        // of which fit (fitting may hold fewer)
};

// InputError when a fixed size cannot be part of any valid layout (naming the flag and why).
// `max_excluded` bounds how many over-memory layouts are kept (least over first) and
// `max_fitting` how many fitting ones (fastest first); `fitting_count` counts them all.
SearchResult search_layouts(const ModelShape& m, const TrainingOptions& t, const Cluster& c, const FixedSizes& fixed,
                            size_t max_excluded = 1000, size_t max_fitting = SIZE_MAX);

// A multi-line explanation of why `l` is not chosen: the rule it breaks, or how far over
// memory it is and which component dominates, with what would fit instead (other options,
// another layout on this cluster, the smallest larger cluster).
std::string why_not(const ModelShape& m, const Layout& l, const TrainingOptions& t, const Cluster& c);

// The component of `s` that takes the most bytes: weights, gradients, optimizer, activations, other.
std::string dominant_component(const StageMemory& s, double* bytes);

}  // namespace moe::plan
