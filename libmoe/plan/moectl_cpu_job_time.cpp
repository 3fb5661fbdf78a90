// Per-rank step time of moectl's CPU engine as a job (moectl_cpu_job.h). Work is counted in
// GEMM FLOPs (forward + backward = 3 x forward) discounted by how small the GEMM's smallest
// dimension is, plus AdamW per parameter; one rate turns it into seconds, calibrated by the
// one-process step of the same model (the job's ranks share the machine as that measurement's
// processes did). Collectives cost a rendezvous plus their payload over the link.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "model/rank_state.h"
#include "model/shard_spec.h"
#include "model/train_model.h"
#include "plan/moectl_cpu_job.h"
#include "plan/moectl_cpu_schedule.h"

namespace moe::plan {

namespace {

// A GEMM dimension of this size halves OpenBLAS's single-thread rate. Chosen with the PP2 run of
// tests/plan/plan_practice_test.py: its stages (2 MoE layers of 64-row expert products, and 2
// such layers + the 8000-row LM head) computed 1 : 1.58 of the time; this gives 1 : 1.66, where
// FLOPs alone would give 1 : 2.
constexpr double kGemmHalfDim = 64;
// AdamW reads the parameter, gradient and both moments and writes three of them (28 B per
// parameter) at a few GB/s: about as long as this many GEMM FLOPs at the engine's rate (an
// estimate, not measured on its own: the optimizer is ~5% of the test model's step).
constexpr double kAdamFlopsPerParam = 200;
constexpr double kF = 4;

double efficiency(double dim) { return dim / (dim + kGemmHalfDim); }
double gemm(double flops, double smallest_dim) { return flops / efficiency(std::max(smallest_dim, 1.0)); }

// The shapes one rank computes with.
struct RankDims {
  double T = 0;          // tokens of a micro-batch on this rank (its CP share)
  double L = 0;          // sequence length its attention sees
  double heads_dim = 0;  // query width on this rank (heads x head_dim)
  double kv_dim = 0;     // key/value width
  double ffn = 0, moe_ffn = 0, shared_ffn = 0, vocab = 0;
  double expert_rows = 0;  // rows each local expert gets per micro-batch
};

RankDims rank_dims(const model::ModelConfig& c, const model::LocalShapes& local, const CpuJob& job) {
  const dist::ParallelLayout& l = job.layout;
  RankDims d;
  d.T = double(job.micro_batch_size) * double(job.seq_length) / l.cp;
  d.L = double(job.seq_length);
  d.heads_dim = double(local.heads) * c.kv_channels, d.kv_dim = double(local.query_groups) * c.kv_channels;
  d.ffn = l.tp > 1 ? double(local.ffn) : c.ffn_hidden_size;
  d.moe_ffn = l.tp > 1 ? double(local.moe_ffn) : c.moe_ffn_hidden_size;
  d.shared_ffn = l.tp > 1 ? double(local.shared_ffn) : c.moe_shared_expert_intermediate_size;
  d.vocab = l.tp > 1 ? double(local.vocab_rows) : double(c.vocab_size);
  // Each EP rank's experts get their share of every EP rank's routed rows.
  if (c.num_experts > 0) d.expert_rows = d.T * c.moe_router_topk * l.ep / double(c.num_experts);
  return d;
}

// Forward + backward work of one micro-batch through layers [begin, end) (+ the head).
double chunk_work(const model::ModelConfig& c, const RankDims& d, int begin, int end, bool head) {
  const double D = c.hidden_size, T = d.T;
  double w = 0;
  for (int i = begin; i < end; ++i) {
    w += gemm(6 * T * D * (2 * d.heads_dim + 2 * d.kv_dim), std::min({T, D, d.heads_dim}));
    w += gemm(6 * T * d.L / 2 * d.heads_dim, c.kv_channels);  // causal scores and values
    if (c.is_moe_layer(i)) {
      // Every rank routes its micro-batch's rows; its experts run the rows routed to them.
      w += gemm(6 * T * D * c.num_experts, std::min<double>(T, c.num_experts));
      w += gemm(6 * T * c.moe_router_topk * 3 * D * d.moe_ffn, d.expert_rows);
      if (d.shared_ffn > 0) w += gemm(6 * T * 3 * D * d.shared_ffn, std::min(T, d.shared_ffn));
    } else {
      w += gemm(6 * T * 3 * D * d.ffn, std::min(T, d.ffn));
    }
  }
  if (head) w += gemm(6 * T * D * d.vocab, std::min({T, D, double(model::kHeadChunk)}));
  return w;
}

// One collective of `bytes` on this rank.
struct Comm {
  int64_t calls = 0;
  double bytes = 0;
  void add(int64_t n, double b) { calls += n, bytes += double(n) * b; }
  Comm& operator+=(const Comm& o) {
    calls += o.calls, bytes += o.bytes;
    return *this;
  }
  double seconds(const CpuRates& r) const {
    return double(calls) * r.collective_latency_s + bytes / (r.link_gbps * 1e9);
  }
};

// The collectives of one micro-batch's forward and backward through `layers` layers (`moe` of
// them MoE) on a rank, with the embedding and the head when it holds them (model/stage.cpp,
// moe_layer.cpp, vocab_parallel.cpp).
Comm layer_comm(const model::ModelConfig& c, const CpuJob& job, const RankDims& d, int layers, int moe, bool embedding,
                bool head) {
  const dist::ParallelLayout& l = job.layout;
  const double D = c.hidden_size, T = d.T, R = T * c.moe_router_topk;
  const int dense = layers - moe;
  Comm k;
  if (l.tp > 1) {
    const double share = double(l.tp - 1) / l.tp, rows = kF * T * D;
    if (job.options.sequence_parallel) {
      // Each norm's output gathered whole for its branch (forward, and again in the backward with
      // the output gradient: 6 per layer); the row-parallel outputs reduce-scattered back
      // (attention forward and backward; the dense MLP's too; the MoE layer's output is whole).
      k.add(int64_t(layers) * 6, share * rows);
      k.add(int64_t(layers) * 2 + int64_t(dense) * 2, share * rows);
    } else {
      k.add(int64_t(layers) * 2 + int64_t(dense) * 2, 2 * share * rows);  // the same sums as all-reduces
    }
    // MoE: the experts' partial outputs (the routed rows) and input gradients summed.
    k.add(moe, 2 * share * kF * R * D);
    k.add(moe, 2 * share * rows);
    if (c.qk_layernorm) k.add(layers, 2 * share * kF * 2 * c.kv_channels);  // q/k norm weight gradients
    const double chunk = std::min(T, double(model::kHeadChunk));
    if (embedding) k.add(2, share * rows);  // vocabulary-parallel embedding's sum, its gradient gathered
    if (head) {
      k.add(2, share * rows);  // the head's input gathered, its gradient scattered
      k.add(int64_t(std::ceil(T / chunk)) * 3, 2 * share * kF * 2 * chunk);  // logits' max, sums, argmax
    }
  }
  if (l.cp > 1) {
    // Megatron's attention ring (which moectl's trainer does not run yet): each layer passes its
    // keys and values cp - 1 steps around the CP group forward, and them with their gradients
    // backward.
    k.add(int64_t(layers) * 3 * (l.cp - 1), kF * T * 2 * d.kv_dim);
  }
  if (l.ep > 1) {
    // Dispatch and combine, forward and backward, after the row counts.
    k.add(int64_t(moe) * 4, double(l.ep - 1) / l.ep * kF * R * D);
    k.add(moe, 8.0 * c.num_experts);
  }
  return k;
}

// A distributed optimizer's reduce-scatter and all-gather of n parameters over g ranks (~32 MB
// pieces), or the replicated optimizer's all-reduce.
Comm gradient_comm(double n, int g, bool distributed) {
  Comm k;
  if (g <= 1 || n <= 0) return k;
  const double share = double(g - 1) / g;
  if (!distributed) {
    k.add(1, 2 * share * kF * n);
    return k;
  }
  const double chunk = std::floor(n / g);
  const double piece = std::max(1.0, std::min(chunk, std::floor(double(size_t(8) << 20) / g)));
  const int64_t pieces = int64_t(std::ceil(chunk / piece));
  k.add(2 * pieces, share * kF * piece * g);
  if (n > chunk * g) k.add(2, kF * (n - chunk * g));  // the remainder: all-reduced and broadcast
  return k;
}

}  // namespace

std::vector<CpuRankTime> moectl_cpu_job_time(const model::ModelConfig& c, const CpuJob& job, const CpuRates& rates) {
  const dist::ParallelLayout& l = job.layout;
  if (!(rates.one_process_step_s > 0)) throw_input("the CPU time model needs the one-process step time (> 0)");
  const model::ShardSpec spec(c, l, model::kMakeVocabSizeDivisibleBy);
  const std::vector<CpuRankMemory> mem = moectl_cpu_job_memory(c, job);
  const int64_t M = job.micro_batches();

  // The rate: the one-process step's work over its measured seconds.
  CpuJob one = job;
  one.layout = dist::ParallelLayout{};
  const model::ShardSpec one_spec = model::single_process_spec(c);
  const RankDims one_dims = rank_dims(c, one_spec.local_shapes(0, 0, 0), one);
  double total_params = 0;
  for (const CpuRankMemory& m : moectl_cpu_job_memory(c, one)) total_params += m.params();
  const double one_work =
      double(one.micro_batches()) * chunk_work(c, one_dims, 0, c.num_layers, true) + kAdamFlopsPerParam * total_params;
  const double rate = one_work / rates.one_process_step_s;

  // Every rank's per-micro-batch compute and in-layer communication, by stage.
  std::vector<CpuRankTime> out;
  std::vector<double> micro_batch_s(size_t(l.world()));
  for (const CpuRankMemory& m : mem) {
    CpuRankTime t;
    t.rank = m.rank;
    const RankDims d = rank_dims(c, spec.local_shapes(m.tp, 0, m.ep), job);
    double work = 0;
    Comm k;
    for (int v = 0; v < l.vpp; ++v) {
      const int chunk = v * l.pp + m.pp, begin = spec.chunk_begin(chunk), end = spec.chunk_begin(chunk + 1);
      const bool head = chunk == l.pp * l.vpp - 1;
      int moe = 0;
      for (int i = begin; i < end; ++i) moe += c.is_moe_layer(i) ? 1 : 0;
      work += chunk_work(c, d, begin, end, head);
      k += layer_comm(c, job, d, end - begin, moe, chunk == 0, head);
      if (l.pp > 1) {  // activations forward, their gradients back, at each chunk's ends
        const double rows = job.options.sequence_parallel && l.tp > 1 ? std::ceil(d.T / l.tp) : d.T;
        k.add(chunk == 0 || head ? 2 : 4, kF * rows * c.hidden_size);
      }
    }
    micro_batch_s[size_t(m.rank)] = work / rate + k.seconds(rates);
    t.compute_s = double(M) * work / rate;
    t.collectives = int64_t(M) * k.calls, t.comm_bytes = double(M) * k.bytes;
    t.comm_s = double(M) * k.seconds(rates);
    out.push_back(t);
  }

  // The pipeline: stage s's micro-batch time is its slowest rank's (the ranks of a stage wait for
  // each other in their collectives).
  std::vector<double> stage_s(size_t(l.pp), 0.0);
  for (const CpuRankMemory& m : mem)
    stage_s[size_t(m.pp)] = std::max(stage_s[size_t(m.pp)], micro_batch_s[size_t(m.rank)]);
  const double pipeline = l.pp > 1 ? pipeline_step_s(stage_s, l.vpp, int(M)) : double(M) * stage_s[0];

  // After the micro-batches: gradients over the data-parallel groups; the step's statistics, the
  // gradient norm and the finite check (small all-reduces over the DP, TP, EP and pipeline groups,
  // train/trainer.cpp and parallel_optimizer.cpp); AdamW over the rank's shard.
  const int small = l.world() > 1 ? 2 + 2 * (l.dp > 1) + 4 * (l.pp > 1) + (l.ep > 1) + 2 * (l.tp > 1) +
                                        (l.tp > 1 && job.options.sequence_parallel)
                                  : 0;
  double step = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    CpuRankTime& t = out[i];
    const CpuRankMemory& m = mem[i];
    Comm k = gradient_comm(m.dense_params, l.dp * l.cp, job.distributed_optimizer);
    k += gradient_comm(m.expert_params, l.edp(), job.distributed_optimizer);
    k.add(small, 8);
    t.collectives += k.calls, t.comm_bytes += k.bytes;
    t.optimizer_s = kAdamFlopsPerParam * m.optimizer / (2 * kF) / rate;
    const double after = k.seconds(rates);
    t.comm_s += after;
    t.bubble_s = pipeline - double(M) * micro_batch_s[i];
    t.step_s = pipeline + after + t.optimizer_s;
    step = std::max(step, t.step_s);
  }
  for (CpuRankTime& t : out) t.step_s = step;  // the ranks wait for each other in the step's checks
  return out;
}

}  // namespace moe::plan
