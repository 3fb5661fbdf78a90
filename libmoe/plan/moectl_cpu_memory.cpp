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

  r.kernels = moectl_cpu_kernel_bytes(tokens(l, t), t.seq_length, std::max(1, t.cpu_threads),
                                      m.num_moe_layers() > 0 ? m.num_experts : 0, m.moe_router_topk,
                                      m.moe_ffn_hidden_size, l.recompute == Recompute::kSelective);
  return r;
}

double moectl_cpu_kernel_bytes(int64_t T, int64_t L, int threads, int64_t experts, int64_t topk, int64_t moe_ffn,
                               bool selective) {
  double b = threads * 3 * kF * double(L) * double(L);
  if (experts > 0) {
    const double E = double(experts), R = double(T) * double(topk);
    const double blocks = threads * std::ceil(R / E) * kF * double(moe_ffn) * (3 + (selective ? 1 : 0));
    b += std::max(blocks, kF64 * double(T) * E);
  }
  return b;
}

}  // namespace moe::plan
