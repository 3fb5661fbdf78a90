// Per-rank memory of moectl's CPU engine as a job (moectl_cpu_job.h).
#include <algorithm>
#include <cmath>

#include "dist/process_groups.h"
#include "model/rank_state.h"
#include "model/shard_spec.h"
#include "model/train_model.h"
#include "model/weight_map.h"
#include "model/workspace.h"
#include "plan/moectl_cpu_job.h"
#include "plan/moectl_cpu_memory.h"
#include "plan/moectl_cpu_schedule.h"

namespace moe::plan {

namespace {

constexpr double kF = 4;  // every tensor of the CPU engine is fp32

// A rank's index in its group of kind `g`.
int coordinate(const dist::ParallelLayout& l, dist::Group g, int rank) {
  for (const auto& ranks : dist::group_ranks(l, g))
    for (size_t i = 0; i < ranks.size(); ++i)
      if (ranks[i] == rank) return int(i);
  return 0;
}

// Parameters (dense, experts) rank (tp, stage, ep) trains: TrainModel's flat buffers, from
// ShardSpec's local parts (unpadded vocabulary without TP, as the engine reads it).
struct RankParams {
  double dense = 0, experts = 0;
};
RankParams rank_params(const model::ModelConfig& c, const model::ShardSpec& spec, int tp, int stage, int ep) {
  const dist::ParallelLayout& l = spec.layout();
  RankParams p;
  const model::WeightMap map = model::WeightMap::for_config(c);
  for (const model::WeightRule& rule : map.rules()) {
    if (rule.buffer) continue;
    Shape full = rule.shape;
    const bool vocab = rule.mcore == model::names::kEmbedding || rule.mcore == model::names::kOutput;
    if (vocab && l.tp > 1) full[0] = spec.padded_vocab();
    std::string local;
    Shape shape;
    if (!spec.local_part(rule.mcore, full, tp, stage, ep, &local, &shape)) continue;
    (model::names::expert_index(rule.mcore) >= 0 ? p.experts : p.dense) += double(shape_numel(shape));
  }
  // The last stage's own copy of a tied embedding (Megatron's output_layer.weight under PP).
  if (l.pp > 1 && stage == l.pp - 1 && !c.untie_embeddings_and_output_weights)
    p.dense += double(l.tp > 1 ? spec.padded_vocab() / l.tp : c.vocab_size) * c.hidden_size;
  return p;
}

// AdamW's two moments over a region of n parameters, sharded over a group of g ranks by the
// distributed optimizer (the last rank also keeps the remainder), plus its staging buffer: every
// rank's part of one ~32 MB piece and this rank's (train/distributed_optimizer.cpp). Open MPI's
// reduce-scatter reduces to the group's first rank and scatters from there: that rank holds every
// rank's part of a piece once more.
struct Shard {
  double state = 0, staging = 0;
};
Shard optimizer_shard(double n, int g, int group_rank, bool distributed) {
  Shard s;
  if (n <= 0) return s;
  if (!distributed || g <= 1) {
    s.state = 2 * kF * n;
    return s;
  }
  const double chunk = std::floor(n / g);
  const double mine = group_rank == g - 1 ? n - chunk * (g - 1) : chunk;
  const double piece = std::max(1.0, std::min(chunk, std::floor(double(size_t(8) << 20) / g)));
  s.state = 2 * kF * mine;
  s.staging = kF * piece * (g + 1) + (group_rank == 0 ? kF * piece * g : 0);
  return s;
}

// OpenBLAS packs a product's operands into one buffer per thread, mapped on first use: with the
// inner dimension (the hidden size) within its panel depth, the whole weight operand of the
// widest product (the LM head's vocabulary rows on the last stage) is packed at once, bounded by
// the buffer (32 MiB, its default BUFFER_SIZE), plus a block of the activations.
double openblas_panels(const model::ModelConfig& c, const model::LocalShapes& local, const dist::ParallelLayout& l,
                       bool head) {
  const double D = c.hidden_size;
  double widest = double(local.heads + 2 * local.query_groups) * c.kv_channels;
  widest = std::max({widest, 2.0 * double(l.tp > 1 ? local.moe_ffn : c.moe_ffn_hidden_size),
                     2.0 * double(l.tp > 1 ? local.ffn : c.ffn_hidden_size), double(c.num_experts)});
  if (head) widest = std::max(widest, double(l.tp > 1 ? local.vocab_rows : c.vocab_size));
  return std::min(kF * D * (widest + double(model::kHeadChunk)), double(32 << 20));
}

// The StageShape a rank's chunk of layers [begin, end) has (model::stage_shape's, without a Context).
model::StageShape chunk_shape(const model::ModelConfig& c, const model::LocalShapes& local, const CpuJob& job,
                              int begin, int end) {
  const int tp = job.layout.tp;
  model::StageShape s;
  s.hidden = c.hidden_size, s.heads = local.heads, s.query_groups = local.query_groups;
  s.head_dim = c.kv_channels, s.vocab = tp > 1 ? local.vocab_rows : c.vocab_size, s.qk_layernorm = c.qk_layernorm;
  s.ffn = tp > 1 ? local.ffn : c.ffn_hidden_size;
  s.experts = c.num_experts, s.topk = c.moe_router_topk;
  s.moe_ffn = tp > 1 ? local.moe_ffn : c.moe_ffn_hidden_size;
  s.shared_ffn = tp > 1 ? local.shared_ffn : c.moe_shared_expert_intermediate_size;
  s.shared_gate = c.moe_shared_expert_gate;
  for (int i = begin; i < end; ++i) s.moe_layers.push_back(c.is_moe_layer(i));
  s.tp = tp, s.sequence_parallel = job.options.sequence_parallel && tp > 1;
  return s;
}

}  // namespace

std::vector<CpuRankMemory> moectl_cpu_job_memory(const model::ModelConfig& c, const CpuJob& job) {
  const dist::ParallelLayout& l = job.layout;
  const model::ShardSpec spec(c, l, model::kMakeVocabSizeDivisibleBy);
  const model::ShardSpec all_stages(c, l.stage_view(), model::kMakeVocabSizeDivisibleBy);
  const int64_t T = int64_t(job.micro_batch_size) * job.seq_length / l.cp;
  const int64_t M = job.micro_batches();
  const bool act_recomputed = job.options.recompute.granularity == model::Recompute::kSelective &&
                              std::find(job.options.recompute.modules.begin(), job.options.recompute.modules.end(),
                                        "moe_act") != job.options.recompute.modules.end();
  // Every rank initialises the whole model before it keeps its part (apps/moectl/train.cpp).
  double whole = 0;
  {
    const model::ShardSpec one = model::single_process_spec(c);
    const RankParams all = rank_params(c, one, 0, 0, 0);
    whole = all.dense + all.experts;
  }

  std::vector<CpuRankMemory> out;
  for (int rank = 0; rank < l.world(); ++rank) {
    CpuRankMemory r;
    r.rank = rank;
    r.tp = coordinate(l, dist::Group::kTp, rank), r.pp = coordinate(l, dist::Group::kPp, rank);
    r.ep = coordinate(l, dist::Group::kEp, rank), r.dp = coordinate(l, dist::Group::kDp, rank);
    const int edp_rank = coordinate(l, dist::Group::kEdp, rank);
    const RankParams p = rank_params(c, spec, r.tp, r.pp, r.ep);
    r.dense_params = p.dense, r.expert_params = p.experts;
    r.weights = r.gradients = kF * r.params();
    const Shard dense = optimizer_shard(p.dense, l.dp * l.cp, r.dp, job.distributed_optimizer);
    const Shard experts = optimizer_shard(p.experts, l.edp(), edp_rank, job.distributed_optimizer);
    r.optimizer = dense.state + experts.state;
    r.comm_buffers = dense.staging + experts.staging;

    // Activations: each model chunk's micro-batch arena, once per slot the schedule keeps, and the
    // workspace arena the chunks share. Arenas are mapped pages: only what a step writes is
    // resident (a stage without the head never touches the head's chunk; under EP the experts'
    // rows live outside the arena, its slots for them stay untouched).
    const model::LocalShapes local = spec.local_shapes(r.tp, 0, r.ep);
    const std::vector<int> slots = pipeline_slots(l.pp, l.vpp, r.pp, int(M));
    const bool last = r.pp == l.pp - 1;
    const int64_t R = T * c.moe_router_topk;  // routed rows of a micro-batch (dropless, even routing)
    const double ep_rows_layer =
        l.ep > 1 ? kF * double(R) * (3.0 * c.hidden_size + (act_recomputed ? 2 : 3) * double(local.moe_ffn)) : 0;
    double moe_layers_held = 0;
    for (int v = 0; v < l.vpp; ++v) {
      const int k = v * l.pp + r.pp;
      const model::StageShape s = chunk_shape(c, local, job, spec.chunk_begin(k), spec.chunk_begin(k + 1));
      const model::StageWorkspace w = model::stage_workspace(s, job.options, T, model::StageCall::kTrain);
      const int moe_layers = int(std::count(s.moe_layers.begin(), s.moe_layers.end(), true));
      double saved = double(w.saved);
      if (l.ep > 1) saved -= moe_layers * kF * double(R) * (act_recomputed ? 2 : 3) * double(s.moe_ffn);
      r.activations += slots[size_t(v)] * saved;
      moe_layers_held += double(slots[size_t(v)]) * moe_layers;
      const bool head = last && v == l.vpp - 1;
      r.workspace = std::max({r.workspace, double(w.forward), double(w.backward), head ? double(w.head) : 0.0});
    }
    // Outside the arenas: the kernels' buffers; under EP each held MoE layer's exchanged rows
    // (input, [gate; up], activation, output and the exchange's staging) and, during a backward,
    // their output and input gradients.
    r.kernels = moectl_cpu_kernel_bytes(T, job.seq_length / l.cp, job.threads, c.num_experts, c.moe_router_topk,
                                        local.moe_ffn, act_recomputed);
    if (l.ep > 1) r.kernels += moe_layers_held * ep_rows_layer + 2 * kF * double(R) * c.hidden_size;
    r.kernels += openblas_panels(c, local, l, last);
    // Pipeline messages: one micro-batch's activation rows each (pipeline_schedule.cpp).
    if (l.pp > 1) {
      const int64_t rows = job.options.sequence_parallel && l.tp > 1 ? (T + l.tp - 1) / l.tp : T;
      const int buffers = l.vpp > 1 ? 2 + 2 * l.vpp : (r.pp == 0 || last ? 2 : 3);
      r.comm_buffers += buffers * kF * double(rows) * c.hidden_size;
    }
    // Building the model: the whole initial state, this rank's TP slices of it (copies, every
    // layer), then the flat parameter and gradient buffers of its stage.
    double slices = 0;
    if (l.tp > 1) {
      const RankParams all_layers = rank_params(c, all_stages, r.tp, 0, r.ep);
      slices = all_layers.dense + all_layers.experts;
    } else if (l.world() > 1 && spec.padded_vocab() > c.vocab_size) {  // vocabulary tensors padded, then viewed
      slices = double(c.untie_embeddings_and_output_weights ? 2 : 1) * double(spec.padded_vocab()) * c.hidden_size;
    }
    r.load = kF * (whole + slices) + r.weights + r.gradients;
    out.push_back(r);
  }
  return out;
}

}  // namespace moe::plan
