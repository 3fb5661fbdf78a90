#include "plan/time_model.h"

#include <algorithm>
#include <cmath>

#include "plan/pipeline_split.h"

namespace moe::plan {

// Calibration notes. kGemmEfficiency: cuBLAS BF16 GEMMs on H100 reach ~700 of 989 TFLOP/s at
// large sizes; Megatron's Mixtral-8x7B (coarse experts) reaches 47% MFU end to end and
// fine-grained MoE 25-30% (reference/perf-anchors.md section 1), which the memory-bound,
// all-to-all and per-layer overhead terms below account for. Link rates are the presets'
// achievable NCCL bus bandwidths (nccl-tests maintainers: ~370 GB/s on NVLink4).

namespace {

struct Link {
  double intra = 0, inter = 0;
  // Seconds for a ring collective moving `bytes` per GPU over a group with this span.
  double ring(double bytes, const GroupSpan& g) const {
    if (g.size <= 1) return 0;
    return bytes / ((g.crosses_nodes() ? inter : intra) * 1e9);
  }
  // All-to-all where each GPU sends `bytes` spread evenly over the group's members.
  double all_to_all(double bytes, const GroupSpan& g) const {
    if (g.size <= 1) return 0;
    const double off_node = g.off_node_fraction(), on_node = double(g.per_node - 1) / g.size;
    return std::max(bytes * on_node / (intra * 1e9), off_node > 0 ? bytes * off_node / (inter * 1e9) : 0.0) /
           kAllToAllEfficiency;
  }
};

const char* link_name(const GroupSpan& g) { return g.size <= 1 ? "-" : g.crosses_nodes() ? "network" : "NVLink"; }

double size_factor(double dim) { return dim / (dim + kGemmHalfDim); }

}  // namespace

TimeEstimate estimate_time(const ModelShape& m, const Layout& l, const TrainingOptions& t, const Cluster& c,
                           const MemoryEstimate& mem) {
  const GpuSpec& g = c.gpu;
  const int G = c.nproc_per_node;
  const Link link{g.intra_node_gbps, g.inter_node_gbps};
  const GroupSpan tp_g = group_span(l.tp, 1, G), cp_g = group_span(l.cp, l.tp, G),
                  dp_g = group_span(l.dp * l.cp, l.tp, G), pp_g = group_span(l.pp, l.world() / l.pp, G),
                  etp_g = group_span(l.etp, 1, G), ep_g = group_span(l.ep, l.etp, G),
                  edp_g = group_span(l.edp(), l.etp * l.ep, G);
  const bool fp8 = t.precision == Precision::kFp8;
  // fp32 training runs its GEMMs as TF32, half the BF16 tensor-core rate.
  const double tensor_peak = g.bf16_tflops * 1e12 * (t.precision == Precision::kFp32 ? 0.5 : 1.0);
  const double gemm_peak = fp8 ? g.fp8_tflops * 1e12 * kFp8GemmEfficiency : tensor_peak * kGemmEfficiency;
  const double attn_rate = tensor_peak * kAttentionEfficiency;
  const double hbm = g.hbm_gbps * 1e9 * kHbmEfficiency;
  const double a = t.precision == Precision::kFp32 ? 4 : 2;

  const double h = m.hidden_size, q = double(m.num_attention_heads) * m.kv_channels,
               kv = double(m.num_query_groups) * m.kv_channels, ffx = m.swiglu ? 3 : 2;
  const double V = double(m.padded_vocab(l.tp, t.make_vocab_size_divisible_by));
  const double T = double(l.micro_batch_size) * double(t.seq_length);  // tokens per micro-batch per replica
  const double tc = T / l.cp, ts = l.sequence_parallel ? tc / l.tp : tc, split = double(l.tp) * l.cp;
  auto gemm = [&](double flops, double d1, double d2, double d3) {
    return flops / (gemm_peak * size_factor(d1) * size_factor(d2) * size_factor(d3));
  };

  // One layer, one micro-batch, fwd + bwd on this GPU.
  const double t_attn_lin = gemm(6 * (h * (q + 2 * kv) + q * h) * T / split, tc, h, q / l.tp);
  // Flash attention runs on blocks of seq / cp tokens (seq / 2cp with CP's load-balanced halves).
  const double attn_block = l.cp > 1 ? double(t.seq_length) / (2 * l.cp) : double(t.seq_length);
  const double t_attn_core = 6 * q * double(t.seq_length) * T / split / (attn_rate * attn_block / (attn_block + 256));
  const double t_dense =
      m.ffn_hidden_size ? gemm(6 * h * ffx * m.ffn_hidden_size * T / split, tc, h, double(m.ffn_hidden_size) / l.tp)
                        : 0;
  double t_moe = 0;
  if (m.is_moe()) {
    const double K = m.moe_router_topk, E = m.num_experts, fe = m.moe_ffn_hidden_size;
    const double tokens_per_expert = ts * K * l.etp / (E / l.ep);
    t_moe = gemm(6 * h * ffx * fe * K * T / split, tokens_per_expert, h, fe / l.etp);
    t_moe += gemm(6 * h * E * T / split, ts, h, E);  // router (not in Megatron's model FLOPs)
    if (m.moe_shared_expert_intermediate_size)
      t_moe += gemm(6 * h * ffx * m.moe_shared_expert_intermediate_size * T / split, tc, h,
                    double(m.moe_shared_expert_intermediate_size) / l.tp);
  }
  const bool full = l.recompute == Recompute::kFull;
  auto elementwise = [&](bool moe_layer) {
    const LayerActivations all = layer_activations(m, l, t, moe_layer, Recompute::kNone);
    double s = all.total() * kElementwisePasses / hbm;
    if (l.recompute == Recompute::kSelective)  // norms and activation functions run again
      s += (all.attn_qkv_in + all.mlp_fc1_in + all.mlp_act_out + all.expert_act_out) * 2 / hbm;
    return s;
  };
  const double ew_dense = elementwise(false), ew_moe = m.is_moe() ? elementwise(true) : 0;
  // TP/SP: 2 all-gathers + 2 reduce-scatters forward and again backward (or 4 all-reduces).
  const double tp_layer = l.tp > 1 ? link.ring(8.0 * (l.tp - 1) / l.tp * a * tc * h, tp_g) : 0;
  // CP ring: KV blocks passed cp-1 times forward, KV and their gradients backward.
  const double cp_layer = l.cp > 1
                              ? std::max(kCpUnoverlapped * link.ring(3.0 * (l.cp - 1) * a * tc * 2 * kv / l.tp, cp_g),
                                         link.ring(3.0 * (l.cp - 1) * a * tc * 2 * kv / l.tp, cp_g) - t_attn_core)
                              : 0;
  double ep_layer = 0;
  if (m.is_moe()) {
    const double K = m.moe_router_topk;
    if (t.dispatcher == Dispatcher::kAllToAll) {
      // dispatch + combine, forward and backward: each GPU sends its routed token copies.
      ep_layer = 4 * link.all_to_all(ts * K * h * a * (l.ep - 1) / std::max(1, l.ep), ep_g);
    } else if (t.dispatcher == Dispatcher::kFlex) {
      // DeepEP: a token crosses the network once per distinct remote node among its top-k
      // experts (uniform routing), then fans out over NVLink.
      const double nodes = double(l.ep) / ep_g.per_node;
      const double remote_nodes = nodes > 1 ? (nodes - 1) * (1 - std::pow(1 - 1 / nodes, K)) : 0;
      const double nvlink = ts * K * h * a * (l.ep - 1) / std::max(1, l.ep) / (link.intra * 1e9);
      const double network = ts * h * a * remote_nodes / (link.inter * 1e9);
      ep_layer = l.ep > 1 ? 4 * std::max(nvlink, network) / kAllToAllEfficiency : 0;
    } else {
      const GroupSpan all = group_span(l.ep * l.etp, 1, G);
      ep_layer = link.ring(4.0 * (l.ep * l.etp - 1) * ts * h * a, all);
    }
    if (t.dispatcher != Dispatcher::kAllGather && l.etp > 1)
      ep_layer += link.ring(4.0 * (l.etp - 1) / l.etp * ts * K * l.etp * h * a, etp_g);
  }

  TimeEstimate r;
  r.microbatches = num_microbatches(l, t);
  double worst = -1;
  for (int stage = 0; stage < l.pp; ++stage) {
    const StageLayers sl = stage_layers(m, l, stage);
    const int layers = sl.layers, moe_layers = sl.moe_layers;
    const int dense_layers = layers - moe_layers;
    StageTime s;
    const double core = layers * t_attn_core;
    const double gemms = layers * t_attn_lin + dense_layers * t_dense + moe_layers * t_moe;
    s.compute = gemms + core;
    s.memory_bound = dense_layers * ew_dense + moe_layers * ew_moe;
    s.tp_comm = layers * tp_layer;
    s.cp_comm = layers * cp_layer;
    s.ep_comm = moe_layers * ep_layer;
    s.moe_overhead = moe_layers * kMoeLayerOverheadS;
    if (full) {  // one more forward of every layer, with its communication
      s.recompute = s.compute / 3 + s.memory_bound / 4 + (s.tp_comm + s.ep_comm) / 2 + s.moe_overhead / 2;
    }
    if (stage == l.pp - 1) {
      s.compute += gemm(6 * h * V * T / split, tc, h, V / l.tp);
      s.memory_bound += kLogitBytes * tc * V / l.tp * 2 / hbm;
    }
    // Activations in and gradients out at each chunk boundary.
    // Activations in and gradients out at each chunk boundary; the interleaved schedule
    // overlaps them with compute (Megatron's overlap_p2p_comm).
    if (l.pp > 1) s.pp_p2p = 2.0 * l.vpp * link.ring(a * ts * h, pp_g) * (l.vpp > 1 ? kP2pUnoverlapped : 1.0);
    if (s.total() > worst) worst = s.total(), r.microbatch = s, r.slowest_stage = stage;
  }
  const double t_mb = r.microbatch.total();
  const double bubble_mbs = double(l.pp - 1) / l.vpp;
  r.pipeline_s = t_mb * (double(r.microbatches) + bubble_mbs);
  r.bubble_s = t_mb * bubble_mbs;
  r.bubble_fraction = r.bubble_s / r.pipeline_s;

  // Data parallel: gradients reduce-scattered in fp32 and parameters all-gathered in bf16
  // (distributed optimizer), or one fp32 all-reduce; overlapped with the last micro-batch's
  // backward and the first one's forward.
  const StageMemory& sm =
      mem.first.dense_params + mem.first.expert_params >= mem.last.dense_params + mem.last.expert_params ? mem.first
                                                                                                         : mem.last;
  auto dp_time = [&](double params, int d, const GroupSpan& span) {
    if (d <= 1) return 0.0;
    const double frac = double(d - 1) / d;
    return link.ring(frac * params * (t.use_distributed_optimizer ? 4 + (fp8 ? 2 : a) : 2 * 4), span);
  };
  r.dp_comm_s = dp_time(sm.dense_params, l.dp * l.cp, dp_g) + dp_time(sm.expert_params, l.edp(), edp_g);
  r.dp_exposed_s = std::max(0.0, r.dp_comm_s * (1 - kDpUnoverlapped) - t_mb) + r.dp_comm_s * kDpUnoverlapped;
  // Optimizer: read grads, masters and moments, write them and the bf16 weights.
  const double d_dense = t.use_distributed_optimizer ? double(l.dp) * l.cp : 1.0,
               d_exp = t.use_distributed_optimizer ? double(l.edp()) : 1.0;
  r.optimizer_s = (sm.dense_params / d_dense + sm.expert_params / d_exp) * 34 / hbm;
  r.step_s = r.pipeline_s + r.dp_exposed_s + r.optimizer_s;

  const double tokens = double(t.global_batch_size) * double(t.seq_length);
  r.model_flops_per_step = m.flops_per_token(t.seq_length, V).total() * tokens;
  r.tokens_per_s_per_gpu = tokens / r.step_s / l.world();
  r.tflops_per_gpu = r.model_flops_per_step / r.step_s / l.world() / 1e12;
  r.mfu = r.tflops_per_gpu * 1e12 / (g.bf16_tflops * 1e12);
  r.tp_link = link_name(tp_g);
  r.cp_link = link_name(cp_g);
  r.ep_link = link_name(ep_g);
  r.dp_link = link_name(dp_g);
  r.edp_link = link_name(edp_g);
  r.pp_link = link_name(pp_g);
  return r;
}

}  // namespace moe::plan
