// Memory model against values computed by hand for a small MoE config (every term written out).
#include <gtest/gtest.h>

#include <algorithm>

#include "plan/memory_model.h"
#include "plan/pipeline_split.h"
#include "testutil.h"

namespace moe::plan {
namespace {

// 2 MoE layers, hidden 64, 4 heads / 2 query groups of 16, 4 experts of 32 top-2, vocab 1000.
ModelShape small_moe(int layers = 2) {
  ModelShape m;
  m.num_layers = layers;
  m.hidden_size = 64;
  m.num_attention_heads = 4;
  m.num_query_groups = 2;
  m.kv_channels = 16;
  m.vocab_size = 1000;
  m.num_experts = 4;
  m.moe_ffn_hidden_size = 32;
  m.moe_router_topk = 2;
  m.moe_layer.assign(size_t(layers), true);
  return m;
}

TrainingOptions small_training() {
  TrainingOptions t;
  t.seq_length = 128;
  t.global_batch_size = 4;
  return t;  // bf16, distributed optimizer, dropless with imbalance 1.1
}

TEST(plan_memory_model, ParameterCountsByHand) {
  const ModelShape m = small_moe();
  EXPECT_EQ(m.attention_params(), 64 * (64 + 2 * 32) + 64 * 64);  // qkv + proj = 12288
  EXPECT_EQ(m.expert_params(), 3 * 64 * 32);                      // gate, up, down
  EXPECT_EQ(m.router_params(), 4 * 64);
  EXPECT_EQ(m.padded_vocab(1), 1024);
  EXPECT_EQ(m.padded_vocab(3), 1152);  // multiple of 128 x 3
  EXPECT_EQ(m.num_parameters(), 2 * 1000 * 64 + 64 + 2 * (12288 + 128 + 4 * 6144 + 256));
}

TEST(plan_memory_model, WeightsGradientsOptimizerByHand) {
  const ModelShape m = small_moe();
  Layout l{{.tp = 1, .pp = 1, .vpp = 1, .ep = 2, .etp = 1, .cp = 1, .dp = 2}};
  const MemoryEstimate e = estimate_memory(m, l, small_training());
  const double dense =
      2 * 12288 + 2 * 128 + 2 * 256 + 1024 * 64 + 1024 * 64 + 64;  // layers + embedding + output + final norm
  const double experts = 2 * 2 * 6144;  // MoE layers x local experts (4 over EP2) x expert params
  EXPECT_DOUBLE_EQ(e.first.dense_params, dense);
  EXPECT_DOUBLE_EQ(e.first.expert_params, experts);
  EXPECT_DOUBLE_EQ(e.first.weights, 2 * (dense + experts));
  EXPECT_DOUBLE_EQ(e.first.gradients, 4 * (dense + experts));
  // Dense states sharded over dp x cp = 2; experts over expert-DP = tp*cp*dp/(ep*etp) = 1.
  EXPECT_DOUBLE_EQ(e.first.optimizer, 12 * (dense / 2 + experts / 1));
  TrainingOptions plain = small_training();
  plain.use_distributed_optimizer = false;
  EXPECT_DOUBLE_EQ(estimate_memory(m, l, plain).first.optimizer, 12 * (dense + experts));
}

TEST(plan_memory_model, ActivationsByHand) {
  const ModelShape m = small_moe();
  Layout l{{.tp = 1, .pp = 1, .vpp = 1, .ep = 2, .etp = 1, .cp = 1, .dp = 2}};
  const TrainingOptions t = small_training();
  const double T = 128, h = 64, te = T * 2 * 1.1;  // routed token copies on this GPU, imbalance 1.1
  const LayerActivations x = layer_activations(m, l, t, true, Recompute::kNone);
  EXPECT_DOUBLE_EQ(x.attn_norm_in, 2 * T * h + 4 * T);
  EXPECT_DOUBLE_EQ(x.attn_qkv, 2 * T * (4 + 2 * 2) * 16);
  EXPECT_DOUBLE_EQ(x.attn_out, 2 * T * 64 + 4 * T * 4);
  EXPECT_DOUBLE_EQ(x.router, T * 4 * 12);
  EXPECT_DOUBLE_EQ(x.expert_fc1_in, 2 * te * h);
  EXPECT_DOUBLE_EQ(x.expert_fc1_out, 2 * te * 2 * 32);
  EXPECT_DOUBLE_EQ(x.expert_act_out, 2 * te * 32);
  EXPECT_DOUBLE_EQ(x.combine, 2 * T * 2 * h);
  const double layer = 16896 + 16384 + 32768 + 18432 + 16896 + 16384 + 6144 + 36044.8 + 36044.8 + 18022.4 + 32768;
  EXPECT_NEAR(x.total(), layer, 1e-6);
  EXPECT_NEAR(layer_activations(m, l, t, true, Recompute::kSelective).total(), layer - 16384 - 16384 - 18022.4, 1e-6);
  EXPECT_DOUBLE_EQ(layer_activations(m, l, t, true, Recompute::kFull).total(), 2 * T * h + 4 * T);

  const MemoryEstimate e = estimate_memory(m, l, t);
  EXPECT_DOUBLE_EQ(e.first.layer_microbatches, 2);  // pp 1: one micro-batch of 2 layers
  EXPECT_NEAR(e.first.act_layers, 2 * layer, 1e-6);
  EXPECT_NEAR(e.first.act_dispatcher, 2 * 2 * te * h, 1e-6);
  EXPECT_NEAR(e.first.act_logits, 10 * T * 1024 + 2 * 2 * T * h, 1e-6);
  EXPECT_NEAR(e.first.activations, 2 * layer + 2 * 2 * te * h + 10 * T * 1024 + 2 * 2 * T * h, 1e-6);
  // Two process groups of size > 1 (DP, EP); fragmentation 8% of activations.
  EXPECT_NEAR(e.first.other, 0.75 * kGiB + 2 * 0.25 * kGiB + 0.08 * e.first.activations, 1e-3);
}

// moectl's own CPU engine carves fp32 activations from two arenas whose sizes the engine computes
// (model/workspace.h), each carve rounded to 64 bytes: per layer x_in, h1, x_mid, h2, attention's
// qkv plus the q/k/v split out of it, out and lse, the router's logits, probabilities, two
// routings, token counts and the dispatcher's row map, x_perm, the experts' fc1 output and
// SwiGLU, y_perm; the workspace holds the larger of a layer's backward and one LM-head chunk;
// the kernels keep each thread's attention [L, L] buffers and the experts' backward blocks.
TEST(plan_memory_model, MoectlCpuEngineByHand) {
  const ModelShape m = small_moe();
  Layout l;  // one process
  TrainingOptions t = small_training();
  t.engine = Engine::kMoectlCpu, t.precision = Precision::kFp32, t.use_distributed_optimizer = false;
  t.global_batch_size = 1, t.cpu_threads = 1, t.cpu_process_bytes = 1e8;
  const double T = 128, h = 64, R = T * 2;  // every (token, slot) pair is a dispatcher row
  const LayerActivations x = layer_activations(m, l, t, true, Recompute::kNone);
  EXPECT_DOUBLE_EQ(x.attn_norm_in, 4 * T * h);
  EXPECT_DOUBLE_EQ(x.attn_qkv, 2 * 4 * T * (4 + 2 * 2) * 16);
  EXPECT_DOUBLE_EQ(x.attn_out, 4 * T * 64 + 4 * T * 4);
  // logits, probabilities, two routings (int32 ids + float weights), [E] counts and the
  // dispatcher's [3E] index rounded up to 64 bytes, its int64 row map.
  EXPECT_DOUBLE_EQ(x.router, 2 * 4 * T * 4 + 2 * 8 * T * 2 + 64 + 128 + 8 * R);
  EXPECT_DOUBLE_EQ(x.expert_fc1_in, 4 * R * h);
  EXPECT_DOUBLE_EQ(x.expert_fc1_out, 4 * R * 64);
  EXPECT_DOUBLE_EQ(x.expert_act_out, 4 * R * 32);
  EXPECT_DOUBLE_EQ(x.combine, 4 * R * h);
  const double layer = 4 * 32768 + 131072 + 34816 + 10432 + 3 * 65536 + 32768;
  EXPECT_DOUBLE_EQ(x.total(), layer);
  // Selective (layernorm + moe_act): h1, h2 and the experts' SwiGLU outputs go.
  EXPECT_DOUBLE_EQ(layer_activations(m, l, t, true, Recompute::kSelective).total(), layer - 2 * 32768 - 32768);
  EXPECT_DOUBLE_EQ(layer_activations(m, l, t, true, Recompute::kFull).total(), 4 * T * h);

  const MemoryEstimate e = estimate_memory(m, l, t);
  const double dense = 2 * 12288 + 2 * 128 + 2 * 256 + 2 * 1000 * 64 + 64;  // vocabulary not padded
  const double experts = 2 * 4 * 6144;
  EXPECT_DOUBLE_EQ(e.first.weights, 4 * (dense + experts));
  EXPECT_DOUBLE_EQ(e.first.gradients, 4 * (dense + experts));
  EXPECT_DOUBLE_EQ(e.first.optimizer, 8 * (dense + experts));  // Adam moments, no separate master
  EXPECT_DOUBLE_EQ(e.first.act_layers, 2 * layer);
  const double step = 4 * 4 * T * h;                                 // x, x_next, hf, dhf
  const double head = 8 * T + 4 * T * 1000 + 2 * 4 * T * h + 4 * T;  // rows, logits, hc, dhc, labels
  const double attn_bwd = 4 * T * (2 * 64 + 2 * 32 + 128);           // dout, dq, dk, dv, dqkv
  const double moe_bwd = 2 * 4 * R * h + 4 * T * 2 + 4 * T * 4;      // dy_perm, dx_perm, dweight, dlogits
  const double backward = 4 * T * h + std::max(attn_bwd, moe_bwd);   // dh + the larger
  const double kernels = 3 * 4 * T * T + 64 * 4 * 32 * 3;            // P, P, dP; one expert's block
  EXPECT_DOUBLE_EQ(e.first.act_logits, head);                        // the workspace's largest phase
  EXPECT_DOUBLE_EQ(e.first.act_working, step + std::max(backward, head) - head + kernels);
  EXPECT_DOUBLE_EQ(e.first.other, 1e8);  // the process baseline, nothing for CUDA/NCCL/fragmentation
  // Full recompute: inputs only; the workspace rebuilds one layer whole (beside the two residual
  // buffers of its chunk and the y of its forward) for its backward.
  l.recompute = Recompute::kFull;
  const MemoryEstimate f = estimate_memory(m, l, t);
  EXPECT_DOUBLE_EQ(f.first.act_layers, 2 * 4 * T * h);
  const double rebuilt = 2 * 4 * T * h + (layer - 4 * T * h) + 4 * T * h + backward;
  EXPECT_DOUBLE_EQ(f.first.act_working, step + rebuilt - head + kernels);
  // More than one process is not this engine.
  l.dp = 2;
  EXPECT_NE(moe::testing::input_error([&] { estimate_memory(m, l, t); }).find("one process"), std::string::npos);
}

TEST(plan_memory_model, SequenceAndContextParallelDivideActivations) {
  const ModelShape m = small_moe();
  const TrainingOptions t = small_training();
  Layout base{{.tp = 1, .pp = 1, .vpp = 1, .ep = 1, .etp = 1, .cp = 1, .dp = 1}};
  Layout sp = base;
  sp.tp = 2, sp.etp = 2, sp.sequence_parallel = true;
  const LayerActivations a = layer_activations(m, base, t, true, Recompute::kNone);
  const LayerActivations b = layer_activations(m, sp, t, true, Recompute::kNone);
  EXPECT_DOUBLE_EQ(b.attn_norm_in, a.attn_norm_in / 2);  // SP splits the residual stream over TP
  EXPECT_DOUBLE_EQ(b.attn_qkv, a.attn_qkv / 2);          // heads split over TP
  Layout cp = base;
  cp.cp = 2;
  EXPECT_DOUBLE_EQ(layer_activations(m, cp, t, true, Recompute::kNone).total(), a.total() / 2);
}

TEST(plan_memory_model, PipelineInFlightCounts) {
  const ModelShape m = small_moe(4);
  TrainingOptions t = small_training();  // gbs 4, mbs 1, dp 1 -> 4 micro-batches
  Layout l{{.tp = 1, .pp = 2, .vpp = 1, .ep = 1, .etp = 1, .cp = 1, .dp = 1}};
  MemoryEstimate e = estimate_memory(m, l, t);
  EXPECT_DOUBLE_EQ(e.first.layer_microbatches, 2 * 2);  // 1F1B: stage 0 holds pp = 2 micro-batches of 2 layers
  EXPECT_DOUBLE_EQ(e.last.layer_microbatches, 1 * 2);
  EXPECT_GT(e.last.act_logits, 0);
  EXPECT_EQ(e.first.act_logits, 0);
  l.vpp = 2;  // chunks in flight: 2(pp-1-i) + (vpp-1)pp + 1 -> 5 and 3 chunks of 1 layer
  e = estimate_memory(m, l, t);
  EXPECT_DOUBLE_EQ(e.first.layer_microbatches, 5);
  EXPECT_DOUBLE_EQ(e.last.layer_microbatches, 3);
  t.global_batch_size = 1;  // fewer micro-batches than stages: only 1 in flight
  l.vpp = 1;
  EXPECT_DOUBLE_EQ(estimate_memory(m, l, t).first.layer_microbatches, 2);
}

TEST(plan_memory_model, FullRecomputeKeepsLayerInputsAndOneWorkingLayer) {
  const ModelShape m = small_moe();
  const TrainingOptions t = small_training();
  Layout l{{.tp = 1, .pp = 1, .vpp = 1, .ep = 2, .etp = 1, .cp = 1, .dp = 2}};
  l.recompute = Recompute::kFull;
  const MemoryEstimate e = estimate_memory(m, l, t);
  EXPECT_DOUBLE_EQ(e.first.act_layers, 2 * (2 * 128 * 64 + 4 * 128));
  EXPECT_NEAR(e.first.act_working, layer_activations(m, l, t, true, Recompute::kNone).total(), 1e-6);
}

TEST(plan_pipeline_split, EvenAndUneven) {
  PipelineSplit s;
  ASSERT_TRUE(split_pipeline(32, 4, 2, &s));
  EXPECT_TRUE(s.even());
  EXPECT_EQ(s.chunk_layers, 4);
  ASSERT_TRUE(split_pipeline(94, 8, 4, &s));  // Qwen3-235B: 32 chunks of 3, first and last of 2
  EXPECT_EQ(s.chunk_layers, 3);
  EXPECT_EQ(s.first_chunk, 2);
  EXPECT_EQ(s.last_chunk, 2);
  EXPECT_FALSE(split_pipeline(94, 32, 3, &s));  // 96 slots: the end chunks would be empty
  EXPECT_FALSE(split_pipeline(4, 8, 1, &s));
  ModelShape m = small_moe(94);
  Layout l{{.tp = 1, .pp = 8, .vpp = 4}};
  int total = 0;
  for (int st = 0; st < 8; ++st) total += stage_layers(m, l, st).layers;
  EXPECT_EQ(total, 94);
  EXPECT_EQ(stage_layers(m, l, 0).layers, 11);
  EXPECT_EQ(stage_layers(m, l, 1).layers, 12);
  EXPECT_EQ(stage_layers(m, l, 7).layers, 11);
}

}  // namespace
}  // namespace moe::plan
