// Training speed on the CPU (issue 5's benchmark): a fine-grained MoE (hidden 512, 4 layers,
// 8 heads / 4 KV groups of 64, 64 experts top-8, moe_ffn 256, vocab 32000, 4 x 512 tokens)
// trained for a few steps; prints tokens/s and achieved FLOP/s by Megatron's formula as a
// fraction of OpenBLAS sgemm's rate measured in the same run, peak RSS against weights +
// gradients + Adam state + the activations the engine keeps, and, side by side, the same
// model in PyTorch eager (bench_train_torch.py) with the speed ratio.
//   moe_bench_train [--quick] [--steps N] [--torch SCRIPT]
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/allocator.h"
#include "core/rng.h"
#include "model/train_model.h"
#include "train/optimizer.h"

using namespace moe;
using namespace moe::bench;

namespace {

struct BenchShape {
  int hidden, layers, heads, groups, head_dim, experts, topk, moe_ffn, vocab, seq, mbs;
};

model::ModelConfig config(const BenchShape& s) {
  model::ModelConfig c;
  c.model_type = "qwen3_moe";
  c.num_layers = s.layers, c.hidden_size = s.hidden, c.num_attention_heads = s.heads;
  c.num_query_groups = s.groups, c.kv_channels = s.head_dim, c.vocab_size = s.vocab;
  c.max_position_embeddings = 4096, c.num_experts = s.experts, c.moe_router_topk = s.topk;
  c.moe_ffn_hidden_size = s.moe_ffn;
  c.moe_layer_pattern.assign(size_t(s.layers), true);
  return c;
}

// Megatron's num_floating_point_operations for this batch (reference/perf-anchors.md section 2).
double megatron_flops(const BenchShape& s) {
  const double h = s.hidden, q = double(s.heads) * s.head_dim, kv = double(s.groups) * s.head_dim;
  const double T = double(s.mbs) * s.seq, S2 = double(s.mbs) * s.seq * s.seq;
  const double attn_lin = 6 * (h * (q + 2 * kv) + q * h), attn_core = 6 * q;
  const double mlp = 6 * h * 3.0 * s.moe_ffn * s.topk * s.layers;
  const double logits = 6 * h * s.vocab;
  return T * (mlp + s.layers * attn_lin + logits) + S2 * s.layers * attn_core;
}

// Bytes of the activations TrainModel keeps for the backward (no recompute): per layer the
// residual inputs and norms, attention's qkv/q/k/v/out/lse, the router's logits and
// probabilities, the permuted expert inputs/outputs and each expert's fc1 output and SwiGLU.
double activation_bytes(const BenchShape& s) {
  const double T = double(s.mbs) * s.seq, D = s.hidden, d = s.head_dim, nh = s.heads, ng = s.groups;
  const double rows = T * s.topk, F = s.moe_ffn, E = s.experts;
  const double per_layer =
      4 * T * D + T * (nh + 2 * ng) * d * 2 + T * nh * d + T * nh + 2 * T * E + 2 * rows * D + rows * 3 * F;
  return 4 * (per_layer * s.layers + 2 * T * D);
}

rusage usage() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, keep_freed = true;
  int steps = 3;
  std::string torch_script;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--steps" && i + 1 < argc) steps = std::max(1, std::atoi(argv[++i]));
    else if (a == "--torch" && i + 1 < argc) torch_script = argv[++i];
    else if (a == "--glibc_default") keep_freed = false;  // to show what keep_freed_memory saves
  }
  const BenchShape s = quick ? BenchShape{128, 2, 4, 2, 32, 16, 4, 128, 4096, 128, 2}
                             : BenchShape{512, 4, 8, 4, 64, 64, 8, 256, 32000, 512, 4};
  const model::ModelConfig c = config(s);
  model::TrainOptions opt;
  opt.recompute.granularity = model::Recompute::kNone;
  model::TrainModel m(c, random_state(c, DType::F32), opt);
  // As moectl pt: after the initial state is gone (its large tensors were mapped and are
  // returned), so the heap keeps no hole of the state's size that only this benchmark has.
  if (keep_freed) keep_freed_memory();
  train::Optimizer adam(train::OptimizerConfig{});
  std::vector<train::ParamRef> params;
  int64_t nparams = 0;
  for (auto& [name, t] : m.params()) {
    params.push_back({name, t.f32(), m.grads().at(name).f32(), size_t(t.numel()), train::decays(name)});
    nparams += t.numel();
  }
  adam.bind(train::in_address_order(params));  // as the trainer: state offsets = the flat parameters'
  const int64_t T = int64_t(s.mbs) * s.seq;
  std::vector<int32_t> tokens(static_cast<size_t>(T)), labels(static_cast<size_t>(T)), pos(static_cast<size_t>(T)), cu;
  Rng rng(7);
  for (auto& t : tokens) t = int32_t(rng.uniform() * s.vocab) % s.vocab;
  for (int64_t t = 0; t < T; ++t) {
    pos[size_t(t)] = int32_t(t % s.seq);
    labels[size_t(t)] = (t + 1) % s.seq ? tokens[size_t(t + 1)] : -100;
  }
  for (int b = 0; b <= s.mbs; ++b) cu.push_back(b * s.seq);
  const model::MicroBatchView mb{tokens, labels, pos, cu};
  int64_t loss_tokens = 0;
  for (int32_t l : labels) loss_tokens += l >= 0;

  double first_loss = 0, last_loss = 0, total = 0;
  long faults = 0;
  // Steps 0 and 1 warm up (Adam state and the heap's steady layout appear there), then `steps` timed.
  for (int step = -1; step <= steps; ++step) {
    if (step == 1) faults = usage().ru_minflt;
    const auto t0 = Clock::now();
    m.zero_grad();
    const auto st = m.forward_backward(mb, 1.0f / float(loss_tokens), 1.0f);
    // As the trainer does: the clipped norm bounds the update, so no step needs a dry run.
    const double norm = train::clip_grad_norm(params, 1.0);
    adam.step(params, 1e-4f, std::min(norm, 1.0));
    const double dt = since(t0);
    if (step > 0) total += dt;
    if (step < 0) first_loss = st.lm_loss_sum / double(st.loss_tokens);
    last_loss = st.lm_loss_sum / double(st.loss_tokens);
  }
  faults = usage().ru_minflt - faults;
  const double step_s = total / steps;  // mean step time, as the PyTorch peer reports it
  const double gemm = sgemm_rate(quick ? 512 : 2048);
  const double flops = megatron_flops(s) / step_s, tok_s = double(T) / step_s;
  std::printf("model: %lld parameters, %d layers, %d experts top-%d, %lld tokens per step\n",
              static_cast<long long>(nparams), s.layers, s.experts, s.topk, static_cast<long long>(T));
  std::printf("loss %.4f -> %.4f over %d steps (must fall)\n", first_loss, last_loss, steps);
  std::printf("moectl: %.3f s/step, %.1f tokens/s, %.1f GFLOP/s (Megatron formula) = %.1f%% of sgemm (%.1f GFLOP/s)\n",
              step_s, tok_s, flops / 1e9, 100 * flops / gemm, gemm / 1e9);
  const double state = double(nparams) * 16, acts = activation_bytes(s), rss = double(usage().ru_maxrss) * 1024.0;
  std::printf("page faults per timed step: %.0f (%s)\n", double(faults) / steps,
              keep_freed ? "freed memory kept" : "glibc defaults");
  std::printf("peak RSS %.2f GiB = %.2fx (weights + grads + Adam %.2f GiB + activations %.2f GiB)\n",
              rss / 1073741824.0, rss / (state + acts), state / 1073741824.0, acts / 1073741824.0);
  if (!torch_script.empty()) {
    char cmd[1024];
    std::snprintf(cmd, sizeof cmd,
                  "/usr/bin/python3 %s --hidden %d --layers %d --heads %d --groups %d --head_dim %d --experts %d "
                  "--topk %d --moe_ffn %d --vocab %d --seq %d --mbs %d --steps %d --threads %d",
                  torch_script.c_str(), s.hidden, s.layers, s.heads, s.groups, s.head_dim, s.experts, s.topk, s.moe_ffn,
                  s.vocab, s.seq, s.mbs, steps, num_threads());
    FILE* f = popen(cmd, "r");
    double torch_tok_s = 0;
    char line[256];
    while (f && std::fgets(line, sizeof line, f)) std::sscanf(line, "torch_tokens_per_s %lf", &torch_tok_s);
    if (f) pclose(f);
    if (torch_tok_s > 0)
      std::printf("pytorch eager: %.1f tokens/s (%.1f%% of sgemm); moectl / pytorch = %.2fx\n", torch_tok_s,
                  100 * megatron_flops(s) / (double(T) / torch_tok_s) / gemm, tok_s / torch_tok_s);
    else std::printf("pytorch eager: not run (no /usr/bin/python3 with torch)\n");
  }
  return std::isfinite(last_loss) && last_loss < first_loss ? 0 : 1;
}
