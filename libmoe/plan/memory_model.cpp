#include "plan/memory_model.h"

#include <algorithm>

#include "core/error.h"
#include "plan/moectl_cpu_memory.h"
#include "plan/pipeline_split.h"

namespace moe::plan {

int64_t num_microbatches(const Layout& l, const TrainingOptions& t) {
  return t.global_batch_size / (int64_t(l.micro_batch_size) * l.dp);
}

LayerActivations layer_activations(const ModelShape& m, const Layout& l, const TrainingOptions& t, bool moe_layer,
                                   Recompute r) {
  if (t.engine == Engine::kMoectlCpu)
    return moectl_cpu_layer_activations(m, t, int64_t(l.micro_batch_size) * t.seq_length, moe_layer, r);
  const double b = 2;  // bf16 activations (fp32 training keeps 4)
  const double a = t.precision == Precision::kFp32 ? 4 : b;
  const double h = m.hidden_size, d = m.kv_channels, nq = m.num_attention_heads, ng = m.num_query_groups;
  // Tokens per GPU: full sequence shard of this CP rank (tc); sequence-parallel regions split
  // it over TP (ts).
  const double tc = double(l.micro_batch_size) * double(t.seq_length) / l.cp;
  const double ts = l.sequence_parallel ? tc / l.tp : tc;
  LayerActivations x;
  x.attn_norm_in = a * ts * h + 4 * ts;  // residual stream + fp32 rstd
  if (r == Recompute::kFull) return x;   // the layer input is all a fully recomputed layer keeps
  x.attn_qkv_in = a * ts * h;
  x.attn_qkv = a * tc * (nq + 2 * ng) * d / l.tp;
  if (m.qk_layernorm) x.attn_qkv += a * tc * (nq + ng) * d / l.tp + 4 * tc * (nq + ng) / l.tp;
  x.attn_out = a * tc * nq * d / l.tp + 4 * tc * nq / l.tp;  // flash output + fp32 log-sum-exp
  x.mlp_norm_in = a * ts * h + 4 * ts;
  x.mlp_fc1_in = a * ts * h;
  const double gate = m.swiglu ? 2 : 1;
  const double f = moe_layer ? m.moe_shared_expert_intermediate_size : m.ffn_hidden_size;
  if (f > 0) {
    x.mlp_fc1_out = a * tc * gate * f / l.tp;
    x.mlp_act_out = a * tc * f / l.tp;
    if (moe_layer && m.moe_shared_expert_gate) x.mlp_act_out += a * ts;
  }
  if (moe_layer) {
    const double E = m.num_experts, K = m.moe_router_topk, fe = m.moe_ffn_hidden_size;
    // Tokens this GPU's experts process: its share of the EP group's routed tokens, gathered
    // over ETP, times the routing imbalance (or capacity factor).
    const double te = ts * K * l.etp * t.expert_tokens_factor();
    x.router = ts * E * (4 + 8);  // fp32 probabilities + int64 permutation map
    x.expert_fc1_in = a * te * h;
    x.expert_fc1_out = a * te * gate * fe / l.etp;
    x.expert_act_out = a * te * fe / l.etp;
    x.combine = a * ts * K * h;  // unpermuted expert outputs kept for the probability gradient
  }
  if (r == Recompute::kSelective) {
    x.attn_qkv_in = 0;  // norm outputs recomputed from the kept norm inputs
    x.mlp_fc1_in = 0;
    x.mlp_act_out = moe_layer && m.moe_shared_expert_gate ? a * ts : 0;  // activation functions recomputed
    x.expert_act_out = 0;
  }
  return x;
}

namespace {

int process_groups(const Layout& l) {
  int n = 0;
  for (int size : {l.tp, l.cp, l.dp * l.cp, l.pp, l.ep, l.etp, l.edp()}) n += size > 1 ? 1 : 0;
  return n;
}

// moectl's CPU engine on one process: its two arenas (the micro-batch's kept activations and the
// workspace of temporaries, sized by the engine's own stage_workspace) and the kernels' buffers
// outside them; the process baseline is `other`.
void moectl_cpu_activations(const ModelShape& m, const Layout& l, const TrainingOptions& t, StageMemory& r) {
  const int moe_layers = m.num_moe_layers(), dense_layers = m.num_layers - moe_layers;
  r.layer_microbatches = m.num_layers;
  r.act_layers = moe_layers * layer_activations(m, l, t, true, l.recompute).total() +
                 dense_layers * layer_activations(m, l, t, false, l.recompute).total();
  const MoectlCpuWorking w = moectl_cpu_working(m, l, t);
  r.act_working = w.step_buffers + w.workspace + w.kernels;
  r.act_logits = w.head_chunk;
  r.act_dispatcher = 0;  // the permuted rows are counted in the layers (expert_fc1_in, combine)
  r.activations = r.act_layers + r.act_working + r.act_logits;
  r.cuda_context = r.nccl = r.fragmentation = 0;
  r.other = t.cpu_process_bytes;
}

StageMemory stage_memory(const ModelShape& m, const Layout& l, const TrainingOptions& t, int stage) {
  const StageLayers s = stage_layers(m, l, stage);
  const bool first = stage == 0, last = stage == l.pp - 1;
  const int dense_layers = s.layers - s.moe_layers;
  const double h = m.hidden_size;
  const double V = t.engine == Engine::kMoectlCpu ? double(m.vocab_size)  // moectl's engine does not pad
                                                  : double(m.padded_vocab(l.tp, t.make_vocab_size_divisible_by));
  StageMemory r;
  r.stage = stage;
  double dense = double(s.layers) * double(m.attention_params()) / l.tp +
                 double(dense_layers) * double(m.dense_mlp_params()) / l.tp +
                 double(s.moe_layers) * double(m.shared_expert_params()) / l.tp;
  dense += double(s.layers) * double(m.layer_norm_params()) + double(s.moe_layers) * double(m.router_params());
  if (first) dense += V * h / l.tp;
  // The output layer, or with tied embeddings and PP > 1 the last stage's copy of them.
  if (last && (m.untie_embeddings_and_output_weights || !first)) dense += V * h / l.tp;
  if (last) dense += h;  // final norm
  // Each EP rank holds a whole number of experts.
  const int local_experts = m.is_moe() ? m.num_experts / l.ep : 0;
  const double experts =
      m.is_moe() ? double(s.moe_layers) * double(local_experts) * double(m.expert_params()) / l.etp : 0.0;
  r.dense_params = dense;
  r.expert_params = experts;

  const bool fp32 = t.precision == Precision::kFp32;
  const double wbytes = fp32 ? 4 : (t.precision == Precision::kFp8 ? 3 : 2);  // fp8 keeps a cast copy
  const double state = fp32 ? 8 : 12;  // (fp32 master +) Adam exp_avg, exp_avg_sq
  const double d_dense = t.use_distributed_optimizer ? double(l.dp) * l.cp : 1.0;
  const double d_expert = t.use_distributed_optimizer ? double(l.edp()) : 1.0;
  r.weights = wbytes * (dense + experts);
  r.gradients = 4 * (dense + experts);
  r.optimizer = state * (dense / d_dense + experts / d_expert);

  if (t.engine == Engine::kMoectlCpu) {
    moectl_cpu_activations(m, l, t, r);
    return r;
  }

  // In-flight activations (1F1B): stage i holds min(pp - i, m) micro-batches; interleaved
  // holds 2(pp-1-i) + (vpp-1)pp + 1 model chunks (Megatron's warm-up count + 1).
  const double mbs = double(num_microbatches(l, t));
  double held;  // layer-microbatches
  if (l.vpp == 1) {
    held = std::min(double(l.pp - stage), mbs) * s.layers;
  } else {
    const double chunks = std::min(mbs * l.vpp, double(2 * (l.pp - 1 - stage) + (l.vpp - 1) * l.pp + 1));
    held = chunks * double(s.layers) / l.vpp;
  }
  const double a_moe = layer_activations(m, l, t, true, l.recompute).total();
  const double a_dense = layer_activations(m, l, t, false, l.recompute).total();
  const double per_layer = s.layers ? (s.moe_layers * a_moe + dense_layers * a_dense) / s.layers : 0;
  r.layer_microbatches = held;
  r.act_layers = held * per_layer;
  // A fully recomputed layer is rebuilt whole for its backward.
  if (l.recompute == Recompute::kFull)
    r.act_working = std::max(s.moe_layers ? layer_activations(m, l, t, true, Recompute::kNone).total() : 0.0,
                             dense_layers ? layer_activations(m, l, t, false, Recompute::kNone).total() : 0.0);
  const double tc = double(l.micro_batch_size) * double(t.seq_length) / l.cp;
  const double ts = l.sequence_parallel ? tc / l.tp : tc;
  if (s.moe_layers) {
    // Dispatch send + receive buffers of one MoE layer (the allgather dispatcher gathers the
    // whole EP group's tokens).
    const double te = ts * m.moe_router_topk * l.etp * t.expert_tokens_factor();
    r.act_dispatcher = t.dispatcher != Dispatcher::kAllGather ? 2 * 2 * te * h : 2 * ts * l.ep * l.etp * h + 2 * te * h;
  }
  if (last) r.act_logits = kLogitBytes * tc * V / l.tp + 2 * 2 * ts * h;  // + final norm in/out
  r.activations = r.act_layers + r.act_working + r.act_dispatcher + r.act_logits;

  r.cuda_context = kCudaContextGiB * kGiB;
  r.nccl = kNcclPerGroupGiB * kGiB * process_groups(l);
  r.fragmentation = kFragmentation * r.activations;
  r.other = r.cuda_context + r.nccl + r.fragmentation;
  return r;
}

}  // namespace

MemoryEstimate estimate_memory(const ModelShape& m, const Layout& l, const TrainingOptions& t) {
  if (t.engine == Engine::kMoectlCpu) {
    if (l.world() != 1 || l.ep != 1 || l.etp != 1 || l.vpp != 1)
      throw_input(
          "layout {}: this model of moectl's CPU engine is of one process (every parallel size 1); for an mpirun job "
          "use moectl plan --moectl_cpu_layout",
          to_string(l));
    if (t.precision != Precision::kFp32) throw_input("moectl's CPU engine trains in fp32 (pass --bf16 false)");
  }
  MemoryEstimate e;
  e.first = stage_memory(m, l, t, 0);
  // With uneven stages the second stage can hold more layers than the first.
  if (l.pp > 2) {
    StageMemory second = stage_memory(m, l, t, 1);
    if (second.total() > e.first.total()) e.first = second;
  }
  e.last = l.pp > 1 ? stage_memory(m, l, t, l.pp - 1) : e.first;
  return e;
}

}  // namespace moe::plan
