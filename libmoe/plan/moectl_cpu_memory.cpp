#include "plan/moectl_cpu_memory.h"

#include <algorithm>
#include <cmath>

#include "plan/memory_model.h"

namespace moe::plan {

namespace {

constexpr double kF = 4, kI32 = 4, kI64 = 8, kF64 = 8;  // bytes of float, int32_t, int64_t, double
constexpr double kHeadChunk = 256;                      // train_model.cpp: LM-head tokens per chunk

// Rows the token dispatcher builds: every (token, slot) pair (dropless; with a capacity factor an
// upper bound, since dropped pairs get no row).
double expert_rows(const ModelShape& m, double T) { return T * m.moe_router_topk; }

double tokens(const Layout& l, const TrainingOptions& t) { return double(l.micro_batch_size) * double(t.seq_length); }

}  // namespace

LayerActivations moectl_cpu_layer_activations(const ModelShape& m, double T, bool moe_layer, Recompute r) {
  const double D = m.hidden_size, d = m.kv_channels, nq = m.num_attention_heads, ng = m.num_query_groups;
  const double qkv_cols = (nq + 2 * ng) * d;
  LayerActivations x;
  x.attn_norm_in = kF * T * D;                  // LayerActs::x_in
  if (r == Recompute::kFull) return x;          // a recomputed chunk keeps only its input
  const bool sel = r == Recompute::kSelective;  // layernorm + moe_act dropped
  x.attn_qkv_in = sel ? 0 : kF * T * D;         // LayerActs::h1
  x.attn_qkv = kF * T * qkv_cols * 2;           // AttentionSaved::qkv, and q, k, v split out of it
  x.attn_out = kF * T * nq * d + kF * T * nq;   // AttentionSaved::out, lse
  x.mlp_norm_in = kF * T * D;                   // LayerActs::x_mid
  x.mlp_fc1_in = sel ? 0 : kF * T * D;          // LayerActs::h2
  const double f = moe_layer ? m.moe_shared_expert_intermediate_size : m.ffn_hidden_size;
  if (f > 0) {
    x.mlp_fc1_out = kF * T * 2 * f;                       // SwigluSaved::gu_T2F
    x.mlp_act_out = sel ? 0 : kF * T * f;                 // SwigluSaved::h_TF
    if (moe_layer) x.mlp_act_out += kF * T * D + kF * T;  // MoeSaved::shared_out_TD, gate_T
  }
  if (moe_layer) {
    const double E = m.num_experts, K = m.moe_router_topk, F = m.moe_ffn_hidden_size;
    const double R = expert_rows(m, T);
    // logits_TE, RouterSaved::probs_TE, its two Routings (selected, routing: int32 ids + float
    // weights), tokens_per_expert; TokenDispatcher's counts/offsets and per-row token, slot, weight.
    x.router = 2 * kF * T * E + 2 * (kI32 + kF) * T * K + kI64 * E + 2 * kI64 * E + R * (2 * kI64 + kF);
    x.expert_fc1_in = kF * R * D;             // MoeSaved::x_perm
    x.expert_fc1_out = kF * R * 2 * F;        // experts[e].gu_T2F
    x.expert_act_out = sel ? 0 : kF * R * F;  // experts[e].h_TF
    x.combine = kF * R * D;                   // MoeSaved::y_perm
  }
  return x;
}

MoectlCpuWorking moectl_cpu_working(const ModelShape& m, const Layout& l, const TrainingOptions& t) {
  const double T = tokens(l, t), D = m.hidden_size, V = double(m.vocab_size);
  const double d = m.kv_channels, nq = m.num_attention_heads, ng = m.num_query_groups;
  const double qkv_cols = (nq + 2 * ng) * d;
  const bool sel = l.recompute == Recompute::kSelective;
  const double threads = std::max(1, t.cpu_threads);
  MoectlCpuWorking w;
  w.step_buffers = 4 * kF * T * D + kI64 * T;  // x, x_next, hf (reused as dx), dhf; label rows
  const double c = std::min(T, kHeadChunk);
  w.head_chunk = kF * c * V + 2 * kF * c * D + kI32 * c;  // logits, hc, dhc, lc (kept to the end of the step)

  // layer_backward: copies of h1/h2 (or their recomputation) and dh, then the MLP/MoE branch's
  // temporaries, then attention's.
  const double attention = kF * T * (2 * nq * d + 2 * ng * d + qkv_cols + (m.qk_layernorm ? qkv_cols : 0));
  double branch = 0;
  const bool any_dense = m.num_moe_layers()<m.num_layers, any_moe = m.num_moe_layers()> 0;
  if (any_dense) branch = kF * T * m.ffn_hidden_size * (3 + (sel ? 1 : 0));  // dh, dgu (+ h recomputed)
  if (any_moe) {
    const double E = m.num_experts, K = m.moe_router_topk, F = m.moe_ffn_hidden_size;
    const double R = expert_rows(m, T), Fs = m.moe_shared_expert_intermediate_size;
    const double base = 2 * kF * R * D + kF * T * K;  // dy_perm, dx_perm, dweight
    // Experts run side by side, one per thread, each with its block's dh, dgu (+ recomputed h).
    const double experts = threads * std::ceil(R / E) * kF * F * (3 + (sel ? 1 : 0));
    const double router = kF * T * E + kF64 * T * E;  // dlogits, dp
    const double shared = Fs > 0 ? kF * T * E + kF * T * D + kF * T + kF * T * Fs * (3 + (sel ? 1 : 0)) : 0;
    branch = std::max(branch, base + std::max({experts, router, shared}));
  }
  w.backward = 3 * kF * T * D + std::max(branch, attention);
  if (l.recompute == Recompute::kFull) {
    double rebuilt = 0;
    if (any_moe) rebuilt = moectl_cpu_layer_activations(m, T, true, Recompute::kNone).total();
    if (any_dense) rebuilt = std::max(rebuilt, moectl_cpu_layer_activations(m, T, false, Recompute::kNone).total());
    w.recompute = rebuilt - kF * T * D;  // its input is already counted among the kept inputs
  }
  const double L = double(t.seq_length);
  w.attention_workspace = threads * 3 * kF * L * L;
  return w;
}

}  // namespace moe::plan
