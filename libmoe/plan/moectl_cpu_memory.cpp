#include "plan/moectl_cpu_memory.h"

#include <algorithm>
#include <cmath>

#include "plan/memory_model.h"

namespace moe::plan {

namespace {

constexpr double kF = 4, kF64 = 8;  // bytes of float, double

int64_t tokens(const Layout& l, const TrainingOptions& t) { return int64_t(l.micro_batch_size) * t.seq_length; }

model::StageWorkspace workspace(const ModelShape& m, const Layout& l, const TrainingOptions& t) {
  return model::stage_workspace(moectl_cpu_stage_shape(m), moectl_cpu_train_options(l.recompute, t), tokens(l, t),
                                model::StageCall::kTrain);
}

}  // namespace

model::StageShape moectl_cpu_stage_shape(const ModelShape& m) {
  model::StageShape s;
  s.hidden = m.hidden_size, s.heads = m.num_attention_heads, s.query_groups = m.num_query_groups;
  s.head_dim = m.kv_channels, s.vocab = m.vocab_size, s.qk_layernorm = m.qk_layernorm;
  s.ffn = m.ffn_hidden_size;
  s.experts = m.num_experts, s.topk = m.moe_router_topk, s.moe_ffn = m.moe_ffn_hidden_size;
  s.shared_ffn = m.moe_shared_expert_intermediate_size, s.shared_gate = m.moe_shared_expert_gate;
  for (int i = 0; i < m.num_layers; ++i)
    s.moe_layers.push_back(m.moe_layer.size() == size_t(m.num_layers) ? bool(m.moe_layer[size_t(i)]) : m.is_moe());
  return s;
}

model::TrainOptions moectl_cpu_train_options(Recompute r, const TrainingOptions& t) {
  model::TrainOptions o;
  o.recompute.granularity = r;
  if (r == Recompute::kSelective) o.recompute.modules = {"core_attn", "layernorm", "moe_act"};
  o.moe.capacity_factor = t.moe_expert_capacity_factor;
  return o;
}

LayerActivations moectl_cpu_layer_activations(const ModelShape& m, const TrainingOptions& t, int64_t T, bool moe_layer,
                                              Recompute r) {
  // One layer of the asked kind, as the engine would keep it.
  model::StageShape s = moectl_cpu_stage_shape(m);
  s.moe_layers = {moe_layer};
  const model::LayerBytes b =
      model::stage_workspace(s, moectl_cpu_train_options(r, t), T, model::StageCall::kTrain).layers.at(0);
  LayerActivations x;
  x.attn_norm_in = double(b.attn_norm_in), x.attn_qkv_in = double(b.attn_qkv_in), x.attn_qkv = double(b.attn_qkv);
  x.attn_out = double(b.attn_out), x.mlp_norm_in = double(b.mlp_norm_in), x.mlp_fc1_in = double(b.mlp_fc1_in);
  x.mlp_fc1_out = double(b.mlp_fc1_out), x.mlp_act_out = double(b.mlp_act_out), x.router = double(b.router);
  x.expert_fc1_in = double(b.expert_fc1_in), x.expert_fc1_out = double(b.expert_fc1_out);
  x.expert_act_out = double(b.expert_act_out), x.combine = double(b.combine);
  return x;
}

MoectlCpuWorking moectl_cpu_working(const ModelShape& m, const Layout& l, const TrainingOptions& t) {
  const model::StageWorkspace w = workspace(m, l, t);
  double layers = 0;
  for (const model::LayerBytes& b : w.layers) layers += double(b.total());
  MoectlCpuWorking r;
  r.step_buffers = double(w.saved) - layers;
  r.head_chunk = double(w.head);
  r.workspace = double(w.scratch) - double(w.head);

  // The kernels' own buffers (kernels/cpu): attention keeps per-thread [L, L] probabilities
  // (forward P, backward P and dP) for the process's life; the MoE backward briefly adds each
  // expert block's dh, d[gate; up] (+ the recomputed activation) per thread, or the router's
  // fp64 probability gradient, whichever is larger.
  const double T = double(tokens(l, t)), L = double(t.seq_length), threads = std::max(1, t.cpu_threads);
  r.kernels = threads * 3 * kF * L * L;
  if (m.num_moe_layers() > 0) {
    const double E = m.num_experts, F = m.moe_ffn_hidden_size, R = T * m.moe_router_topk;
    const double experts = threads * std::ceil(R / E) * kF * F * (3 + (l.recompute == Recompute::kSelective ? 1 : 0));
    r.kernels += std::max(experts, kF64 * T * E);
  }
  return r;
}

}  // namespace moe::plan
