#include "plan/layout_search.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"
#include "plan/pipeline_split.h"

namespace moe::plan {

namespace {

// Ascending; O(sqrt n), so a large GPU count costs nothing to factor.
std::vector<int> divisors(int n) {
  std::vector<int> low, high;
  for (int i = 1; int64_t(i) * i <= n; ++i)
    if (n % i == 0) {
      low.push_back(i);
      if (i != n / i) high.push_back(n / i);
    }
  low.insert(low.end(), high.rbegin(), high.rend());
  return low;
}

double gib(double bytes) { return bytes / kGiB; }

}  // namespace

namespace {

// The sentences are only built when `why` is wanted: the search checks hundreds of thousands.
#define MOE_PLAN_FAIL(...)                    \
  do {                                        \
    if (why) *why = fmt::format(__VA_ARGS__); \
    return false;                             \
  } while (0)

bool check_layout(const ModelShape& m, const Layout& l, const TrainingOptions& t, const Cluster& c, std::string* why) {
  const int W = c.world();
  if (l.world() != W)
    MOE_PLAN_FAIL("tp x pp x cp x dp = {}x{}x{}x{} = {} but the cluster has {} GPUs", l.tp, l.pp, l.cp, l.dp, l.world(),
                  W);
  if (m.num_attention_heads % l.tp != 0)
    MOE_PLAN_FAIL("tp {} does not divide the {} attention heads", l.tp, m.num_attention_heads);
  if (m.num_query_groups % l.tp != 0)
    MOE_PLAN_FAIL("tp {} does not divide the {} query groups (key/value heads)", l.tp, m.num_query_groups);
  if (m.num_moe_layers() < m.num_layers && m.ffn_hidden_size % l.tp != 0)
    MOE_PLAN_FAIL("tp {} does not divide ffn_hidden_size {}", l.tp, m.ffn_hidden_size);
  if (m.moe_shared_expert_intermediate_size % l.tp != 0)
    MOE_PLAN_FAIL("tp {} does not divide the shared expert's size {}", l.tp, m.moe_shared_expert_intermediate_size);
  if (l.vpp > 1 && l.pp == 1) MOE_PLAN_FAIL("vpp > 1 needs pp > 1 (interleaved pipeline)");
  PipelineSplit split;
  if (!split_pipeline(m.num_layers, l.pp, l.vpp, &split))
    MOE_PLAN_FAIL(
        "the {} layers do not split into pp x vpp = {} chunks (each chunk needs ceil(layers/chunks) "
        "layers, only the first and last may hold fewer, at least one)",
        m.num_layers, l.pp * l.vpp);
  if (!m.is_moe()) {
    if (l.ep != 1) MOE_PLAN_FAIL("ep {} needs a MoE model (this one is dense)", l.ep);
  } else {
    if (m.num_experts % l.ep != 0) MOE_PLAN_FAIL("ep {} does not divide the {} experts", l.ep, m.num_experts);
    if (m.moe_ffn_hidden_size % l.etp != 0)
      MOE_PLAN_FAIL("etp {} does not divide moe_ffn_hidden_size {}", l.etp, m.moe_ffn_hidden_size);
    if ((l.tp * l.cp * l.dp) % (l.ep * l.etp) != 0)
      MOE_PLAN_FAIL("ep x etp = {} does not divide tp x cp x dp = {} (MoE parallel folding)", l.ep * l.etp,
                    l.tp * l.cp * l.dp);
    if (l.tp > 1 && l.ep > 1 && !l.sequence_parallel)
      MOE_PLAN_FAIL("tp > 1 with ep > 1 needs sequence parallel (Megatron-Core's rule for MoE)");
  }
  if (l.cp > 1 && t.seq_length % (2 * l.cp) != 0)
    MOE_PLAN_FAIL("cp {} needs seq_length {} divisible by 2 x cp (load-balanced causal chunks)", l.cp, t.seq_length);
  if (l.sequence_parallel && (t.seq_length / l.cp) % l.tp != 0)
    MOE_PLAN_FAIL("sequence parallel needs seq_length / cp = {} divisible by tp {}", t.seq_length / l.cp, l.tp);
  if (t.global_batch_size % (int64_t(l.micro_batch_size) * l.dp) != 0)
    MOE_PLAN_FAIL("global_batch_size {} is not a multiple of micro_batch_size x dp = {}", t.global_batch_size,
                  l.micro_batch_size * l.dp);
  if (l.vpp > 1 && num_microbatches(l, t) % l.pp != 0)
    MOE_PLAN_FAIL("the interleaved schedule needs the {} micro-batches per step to be a multiple of pp {}",
                  num_microbatches(l, t), l.pp);
  return true;
}

#undef MOE_PLAN_FAIL

}  // namespace

std::string invalid_reason(const ModelShape& m, const Layout& l, const TrainingOptions& t, const Cluster& c) {
  std::string why;
  return check_layout(m, l, t, c, &why) ? std::string() : why;
}

std::string dominant_component(const StageMemory& s, double* bytes) {
  std::pair<double, const char*> parts[] = {{s.weights, "weights"},
                                            {s.gradients, "gradients"},
                                            {s.optimizer, "optimizer"},
                                            {s.activations, "activations"},
                                            {s.other, "other"}};
  auto* best = std::max_element(std::begin(parts), std::end(parts),
                                [](const auto& a, const auto& b) { return a.first < b.first; });
  if (bytes) *bytes = best->first;
  return best->second;
}

namespace {

std::string over_memory_sentence(const MemoryEstimate& e, const Cluster& c) {
  const StageMemory& s = e.peak();
  double dom = 0;
  const std::string what = dominant_component(s, &dom);
  return fmt::format(
      "needs {:.1f} GiB per GPU on pipeline stage {} (weights {:.1f}, gradients {:.1f}, optimizer "
      "{:.1f}, activations {:.1f}, other {:.1f}) but the {} has {:.1f} GiB: {:.1f} GiB over; {} "
      "dominates ({:.1f} GiB)",
      gib(s.total()), s.stage, gib(s.weights), gib(s.gradients), gib(s.optimizer), gib(s.activations), gib(s.other),
      c.gpu.name.empty() ? "GPU" : c.gpu.name, c.gpu.memory_gib, gib(s.total()) - c.gpu.memory_gib, what, gib(dom));
}

bool fits(const MemoryEstimate& e, const Cluster& c) { return e.peak().total() <= c.gpu.memory_gib * kGiB; }

}  // namespace

double ranking_key(const Candidate& c) {
  const Layout& l = c.layout;
  const double simpler =
      1e-3 * std::min(l.cp - 1, 15) + 1e-4 * std::min(l.vpp - 1, 40) + 1e-5 * std::min(l.micro_batch_size - 1, 100);
  return c.time.step_s * (1 + simpler);
}

Candidate evaluate(const ModelShape& m, const Layout& l, const TrainingOptions& t, const Cluster& c) {
  Candidate r;
  r.layout = l;
  r.memory = estimate_memory(m, l, t);
  r.fits = fits(r.memory, c);
  if (!r.fits) r.excluded_by = over_memory_sentence(r.memory, c);
  r.time = estimate_time(m, l, t, c, r.memory);
  return r;
}

SearchResult search_layouts(const ModelShape& m, const TrainingOptions& t, const Cluster& c, const FixedSizes& f,
                            size_t max_excluded, size_t max_fitting) {
  const int W = c.world();
  if (W <= 0) throw_input("the cluster has {} GPUs: give --nnodes and --nproc_per_node of at least 1", W);
  auto allowed = [](const std::optional<int>& fixed, int v) { return !fixed || *fixed == v; };
  const std::vector<int> mbs_list =
      f.micro_batch_size ? std::vector<int>{*f.micro_batch_size} : std::vector<int>{1, 2, 4, 8};
  const std::vector<Recompute> rc_list =
      f.recompute ? std::vector<Recompute>{*f.recompute}
                  : std::vector<Recompute>{Recompute::kNone, Recompute::kSelective, Recompute::kFull};
  SearchResult r;
  std::string first_reason;
  auto note = [&](const Layout& l) {
    if (first_reason.empty()) first_reason = invalid_reason(m, l, t, c);
  };
  // Every rule of check_layout that depends only on the sizes chosen so far is tested as soon as
  // they are chosen, so a branch no completion of which is valid costs one test, not the product
  // of the inner loops (highly composite GPU counts have tens of thousands of tp x cp x pp).
  const bool any_dense = m.num_moe_layers() < m.num_layers;
  auto tp_ok = [&](int tp) {
    return m.num_attention_heads % tp == 0 && m.num_query_groups % tp == 0 &&
           (!any_dense || m.ffn_hidden_size % tp == 0) && m.moe_shared_expert_intermediate_size % tp == 0;
  };
  auto cp_ok = [&](int tp, int cp) {
    if (cp > 1 && t.seq_length % (2 * cp) != 0) return false;
    return !(tp > 1 && t.allow_sequence_parallel) || (t.seq_length / cp) % tp == 0;
  };
  // Interleaving beyond this many virtual stages per rank is only searched when fixed: the
  // bubble gain is gone long before, and a 10000-layer model must not multiply the search.
  constexpr int kMaxSearchedVpp = 64;
  // Layouts evaluated before the search gives up, so that any input answers in under 2 s (about
  // 1 us each on a loaded core). Qwen3-235B-A22B on 131072 GPUs, the largest real case, takes 1.02M.
  constexpr int64_t kMaxEvaluated = 1500000;
  int64_t evaluated = 0;
  for (int tp : divisors(W)) {
    if (!allowed(f.tp, tp)) continue;
    if (!tp_ok(tp)) {
      note(Layout{{tp, 1, 1, 1, tp, 1, W / tp}, 1, Recompute::kNone, tp > 1 && t.allow_sequence_parallel});
      continue;
    }
    for (int cp : divisors(W / tp)) {
      if (!allowed(f.cp, cp)) continue;
      if (!cp_ok(tp, cp)) {
        note(Layout{{tp, 1, 1, 1, 1, cp, W / (tp * cp)}, 1, Recompute::kNone, tp > 1 && t.allow_sequence_parallel});
        continue;
      }
      for (int pp : divisors(W / (tp * cp))) {
        if (!allowed(f.pp, pp)) continue;
        if (pp > m.num_layers) break;  // divisors ascend: every larger pp has an empty stage
        const int dp = W / (tp * cp * pp);
        if (!allowed(f.dp, dp)) continue;
        for (int mbs : mbs_list) {
          if (t.global_batch_size % (int64_t(mbs) * dp) != 0) {
            note(Layout{{tp, pp, 1, 1, 1, cp, dp}, mbs, Recompute::kNone, tp > 1 && t.allow_sequence_parallel});
            continue;
          }
          const int max_vpp =
              pp > 1 ? (f.vpp ? std::min(*f.vpp, m.num_layers / pp) : std::min(kMaxSearchedVpp, m.num_layers / pp)) : 1;
          for (int vpp = 1; vpp <= max_vpp; ++vpp) {
            if (!allowed(f.vpp, vpp)) continue;
            PipelineSplit split;
            if (!split_pipeline(m.num_layers, pp, vpp, &split)) continue;
            if (vpp > 1 && (t.global_batch_size / (int64_t(mbs) * dp)) % pp != 0) continue;
            const int fold = tp * cp * dp;
            for (int ep : m.is_moe() ? divisors(m.num_experts) : std::vector<int>{1}) {
              if (!allowed(f.ep, ep) || fold % ep != 0) continue;
              for (int etp : m.is_moe() ? divisors(fold / ep) : std::vector<int>{tp}) {
                if (m.is_moe() ? !allowed(f.etp, etp) : false) continue;
                Layout l{{tp, pp, vpp, ep, etp, cp, dp}, mbs, Recompute::kNone, tp > 1 && t.allow_sequence_parallel};
                if (!check_layout(m, l, t, c, nullptr)) {
                  note(l);
                  continue;
                }
                evaluated += int64_t(rc_list.size());
                if (evaluated > kMaxEvaluated)
                  throw_input(
                      "the search over {} GPUs passed {} layouts without finishing: fix some sizes "
                      "(--tensor_model_parallel_size, --pipeline_model_parallel_size, "
                      "--expert_model_parallel_size, --micro_batch_size, --recompute_granularity) to narrow it",
                      W, kMaxEvaluated);
                for (Recompute rc : rc_list) {
                  l.recompute = rc;
                  ++r.enumerated;
                  Candidate cand;
                  cand.layout = l;
                  cand.memory = estimate_memory(m, l, t);
                  cand.fits = fits(cand.memory, c);
                  if (cand.fits) {
                    cand.time = estimate_time(m, l, t, c, cand.memory);
                    ++r.fitting_count;
                    r.fitting.push_back(std::move(cand));
                    if (max_fitting < SIZE_MAX / 8 && r.fitting.size() > 4 * max_fitting + 64) {
                      std::nth_element(
                          r.fitting.begin(), r.fitting.begin() + long(max_fitting), r.fitting.end(),
                          [](const Candidate& a, const Candidate& b) { return ranking_key(a) < ranking_key(b); });
                      r.fitting.resize(max_fitting);
                    }
                  } else if (max_excluded > 0) {
                    r.excluded.push_back(std::move(cand));
                    if (r.excluded.size() > 4 * max_excluded + 64) {
                      std::nth_element(
                          r.excluded.begin(), r.excluded.begin() + long(max_excluded), r.excluded.end(),
                          [](const Candidate& a, const Candidate& b) { return a.peak_gib() < b.peak_gib(); });
                      r.excluded.resize(max_excluded);
                    }
                  }
                }
              }
            }
          }
        }
      }
    }
  }
  if (r.enumerated == 0) {
    // Name the fixed size that admits no valid layout.
    Layout probe;
    probe.tp = f.tp.value_or(1);
    probe.pp = f.pp.value_or(1);
    if (!f.pp && f.vpp.value_or(1) > 1)  // interleaving needs a pipeline: probe with the smallest one
      for (int d : divisors(W))
        if (d > 1) {
          probe.pp = d;
          break;
        }
    probe.cp = f.cp.value_or(1);
    probe.vpp = f.vpp.value_or(1);
    probe.ep = f.ep.value_or(1);
    probe.etp = f.etp.value_or(probe.tp);
    probe.micro_batch_size = f.micro_batch_size.value_or(1);
    const int mp = probe.tp * probe.pp * probe.cp;
    probe.dp = f.dp.value_or(mp > 0 && W % mp == 0 ? W / mp : 1);
    probe.sequence_parallel = probe.tp > 1 && t.allow_sequence_parallel;
    std::string why = invalid_reason(m, probe, t, c);
    if (why.empty()) why = first_reason;
    if (why.empty()) why = "no combination of the remaining sizes is valid";
    throw_input(
        "no valid layout on {} GPUs with the fixed sizes: {} (change or drop the fixed "
        "--*_parallel_size / --micro_batch_size flags)",
        W, why);
  }
  // Sort keys, then move each candidate once (they are large).
  std::vector<std::pair<double, size_t>> order(r.fitting.size());
  for (size_t i = 0; i < r.fitting.size(); ++i) order[i] = {ranking_key(r.fitting[i]), i};
  std::sort(order.begin(), order.end());
  std::vector<Candidate> sorted;
  sorted.reserve(order.size());
  for (const auto& [k, i] : order) sorted.push_back(std::move(r.fitting[i]));
  r.fitting = std::move(sorted);
  if (r.fitting.size() > max_fitting) r.fitting.resize(max_fitting);
  std::sort(r.excluded.begin(), r.excluded.end(),
            [](const Candidate& a, const Candidate& b) { return a.peak_gib() < b.peak_gib(); });
  if (r.excluded.size() > max_excluded) r.excluded.resize(max_excluded);
  for (auto& e : r.excluded) {
    e.excluded_by = over_memory_sentence(e.memory, c);
    e.time = estimate_time(m, e.layout, t, c, e.memory);
  }
  return r;
}

std::string why_not(const ModelShape& m, const Layout& l, const TrainingOptions& t, const Cluster& c) {
  const std::string name = to_string(l);
  const std::string bad = invalid_reason(m, l, t, c);
  if (!bad.empty()) return fmt::format("{} is not a valid layout: {}.\n", name, bad);
  const Candidate cand = evaluate(m, l, t, c);
  SearchResult here = search_layouts(m, t, c, FixedSizes{}, 0);
  std::string out;
  if (cand.fits) {
    size_t rank = 0;
    while (rank < here.fitting.size() && here.fitting[rank].time.step_s < cand.time.step_s) ++rank;
    out = fmt::format(
        "{} is valid and fits ({:.1f} of {:.1f} GiB per GPU); it ranks {} of {} by step time "
        "({:.3f} s vs {:.3f} s for the fastest, {}).\n",
        name, cand.peak_gib(), c.gpu.memory_gib, rank + 1, here.fitting_count, cand.time.step_s,
        here.fitting.empty() ? cand.time.step_s : here.fitting[0].time.step_s,
        here.fitting.empty() ? name : to_string(here.fitting[0].layout));
    return out;
  }
  out = fmt::format("{} does not fit: it {}.\n", name, cand.excluded_by);
  out += "What would fit instead:\n";
  auto try_variant = [&](const std::string& what, Layout v, TrainingOptions tv) {
    const MemoryEstimate e = estimate_memory(m, v, tv);
    const double over = gib(e.peak().total()) - c.gpu.memory_gib;
    out += fmt::format("  - {}: {:.1f} GiB per GPU ({})\n", what, gib(e.peak().total()),
                       over <= 0 ? "fits" : fmt::format("still {:.1f} GiB over", over));
  };
  if (!t.use_distributed_optimizer) {
    TrainingOptions tv = t;
    tv.use_distributed_optimizer = true;
    try_variant("--use_distributed_optimizer true (shards fp32 master weights and Adam states over DP)", l, tv);
  }
  if (l.recompute != Recompute::kFull) {
    Layout v = l;
    v.recompute = Recompute::kFull;
    try_variant("--recompute_granularity full", v, t);
  }
  if (!t.use_distributed_optimizer && l.recompute != Recompute::kFull) {
    TrainingOptions tv = t;
    tv.use_distributed_optimizer = true;
    Layout v = l;
    v.recompute = Recompute::kFull;
    try_variant("both", v, tv);
  }
  if (!here.fitting.empty()) {
    const Candidate& b = here.fitting[0];
    out +=
        fmt::format("  - on these {} GPUs the fastest layout that fits is {} ({:.1f} GiB per GPU, {:.3f} s per step)\n",
                    c.world(), to_string(b.layout), b.peak_gib(), b.time.step_s);
  } else {
    out += fmt::format("  - no layout of this model fits on {} x {:.0f} GiB\n", c.world(), c.gpu.memory_gib);
    Cluster bigger = c;
    for (int k = 0; k < 10 && bigger.world() < 16384; ++k) {
      bigger.nnodes *= 2;
      SearchResult s;
      try {
        s = search_layouts(m, t, bigger, FixedSizes{}, 0);
      } catch (const InputError&) {
        continue;  // e.g. the global batch does not divide over this many GPUs
      }
      if (s.fitting.empty()) continue;
      const Candidate& b = s.fitting[0];
      out += fmt::format(
          "  - more GPUs: with --nnodes {} ({} GPUs) the fastest layout that fits is {} ({:.1f} GiB per "
          "GPU, {:.3f} s per step)\n",
          bigger.nnodes, bigger.world(), to_string(b.layout), b.peak_gib(), b.time.step_s);
      break;
    }
  }
  out +=
      "  - CPU offload of optimizer states or activations is not available in moectl, so the memory has to come "
      "from the layout, recompute, the distributed optimizer or more GPUs\n";
  return out;
}

}  // namespace moe::plan
