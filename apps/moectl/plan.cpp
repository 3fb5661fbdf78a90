// `moectl plan`: finds the parallel layout (TP/PP/VPP/EP/ETP/CP/DP, micro-batch, recompute)
// that fits the GPUs' memory and trains fastest, from a model config and a cluster description;
// prints a ranked table (or --json), the flags for the best, --explain LAYOUT or --why_not LAYOUT.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "model/hf_config.h"
#include "plan/layout_search.h"
#include "plan/pipeline_split.h"
#include "plan_moectl_cpu.h"

namespace moectl {

namespace {

namespace fs = std::filesystem;
using namespace moe::plan;

struct PlanArgs {
  std::string model, gpu = "H100-SXM-80G", gpu_presets, explain, why_not, fp8, recompute, dispatcher = "alltoall";
  // int64 so that a value past int is range-checked here, not wrapped or refused by the parser.
  int64_t nnodes = 1, nproc_per_node = 8;
  bool cluster_given = false;  // any of --nnodes, --nproc_per_node, --gpu
  int top = 10, make_vocab_divisible = 128;
  std::optional<double> gpu_memory_gib, gpu_tflops, intra_node_gbps, inter_node_gbps, hbm_gbps, capacity_factor;
  double imbalance = 1.1;
  int64_t seq_length = 4096, global_batch_size = 1024;
  std::optional<int> mbs, tp, pp, vpp, ep, etp, cp;
  bool dist_opt = true, bf16 = true, sequence_parallel = true, json = false;
  // Megatron-style size flags (used without --model).
  std::optional<int> num_layers, hidden_size, ffn_hidden_size, num_attention_heads, num_query_groups, kv_channels,
      num_experts, moe_ffn_hidden_size, moe_router_topk, moe_shared_expert_intermediate_size;
  std::optional<int64_t> vocab_size;
  bool swiglu = true, untie = true, qk_layernorm = false;
  // moectl's own CPU engine as an mpirun job (plan_moectl_cpu.h).
  std::string moectl_cpu_layout;
  std::optional<double> cpu_step_s, cpu_link_gbps, cpu_latency_ms;
  int cpu_threads = 1;
  bool cpu_probe_links = false;
};

moe::model::ModelConfig config_from_flags(const PlanArgs& a) {
  auto need = [](const auto& v, const char* flag) {
    if (!v) moe::throw_input("{} is required when --model is not given (or point --model at a config.json)", flag);
    return *v;
  };
  moe::model::ModelConfig c;
  c.model_type = "flags";
  c.num_layers = need(a.num_layers, "--num_layers");
  c.hidden_size = need(a.hidden_size, "--hidden_size");
  c.num_attention_heads = need(a.num_attention_heads, "--num_attention_heads");
  c.vocab_size = need(a.vocab_size, "--vocab_size");
  c.num_query_groups = a.num_query_groups.value_or(c.num_attention_heads);
  c.kv_channels = a.kv_channels.value_or(c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0);
  c.num_experts = a.num_experts.value_or(0);
  c.ffn_hidden_size = c.num_experts ? a.ffn_hidden_size.value_or(0) : need(a.ffn_hidden_size, "--ffn_hidden_size");
  if (c.num_experts) {
    c.moe_ffn_hidden_size = need(a.moe_ffn_hidden_size, "--moe_ffn_hidden_size");
    c.moe_router_topk = need(a.moe_router_topk, "--moe_router_topk");
    c.moe_shared_expert_intermediate_size = a.moe_shared_expert_intermediate_size.value_or(0);
  }
  c.moe_layer_pattern.assign(size_t(std::max(c.num_layers, 0)), c.num_experts > 0);
  c.qk_layernorm = a.qk_layernorm;
  c.untie_embeddings_and_output_weights = a.untie;
  moe::model::validate_config(c, "model size flags");
  return c;
}

ModelShape shape_from_flags(const PlanArgs& a) {
  ModelShape s = ModelShape::from_config(config_from_flags(a));
  s.swiglu = a.swiglu;
  return s;
}

void run_moectl_cpu_plan(const PlanArgs& a) {
  if (!a.swiglu) moe::throw_input("--moectl_cpu_layout: moectl's engine trains SwiGLU MLPs only (drop --swiglu false)");
  const moe::model::ModelConfig c = !a.model.empty() ? moe::model::load_hf_config(a.model) : config_from_flags(a);
  if (a.nnodes < 1 || a.nproc_per_node < 1) moe::throw_input("--nnodes and --nproc_per_node must be >= 1");
  const int world = a.cluster_given ? int(a.nnodes * a.nproc_per_node) : 0;
  Recompute rc = Recompute::kSelective;  // moectl pt's default
  if (!a.recompute.empty() && !parse_recompute(a.recompute, &rc))
    moe::throw_input("--recompute_granularity '{}': expected none, selective or full", a.recompute);
  MoectlCpuPlanArgs p;
  p.layout = parse_layout(a.moectl_cpu_layout, "--moectl_cpu_layout", world, a.mbs.value_or(1), rc);
  p.layout.sequence_parallel = p.layout.tp > 1 && a.sequence_parallel;
  if (const std::string bad = p.layout.invalid_reason(); !bad.empty())
    moe::throw_input("--moectl_cpu_layout {}: {}", a.moectl_cpu_layout, bad);
  if (world > 0 && p.layout.world() != world)
    moe::throw_input("--moectl_cpu_layout {} has {} ranks, but --nnodes x --nproc_per_node is {}", a.moectl_cpu_layout,
                     p.layout.world(), world);
  p.seq_length = a.seq_length, p.global_batch_size = a.global_batch_size;
  p.distributed_optimizer = a.dist_opt;
  if (a.cpu_threads < 1) moe::throw_input("--cpu_threads {}: must be >= 1", a.cpu_threads);
  p.threads = a.cpu_threads;
  auto positive = [](const std::optional<double>& v, const char* flag) {
    if (v && !(*v > 0)) moe::throw_input("{} {}: must be > 0", flag, *v);
    return v;
  };
  p.step_s = positive(a.cpu_step_s, "--cpu_step_s");
  p.link_gbps = positive(a.cpu_link_gbps, "--cpu_link_gbps");
  if (a.cpu_latency_ms && !(*a.cpu_latency_ms >= 0))
    moe::throw_input("--cpu_collective_latency_ms {}: must be >= 0", *a.cpu_latency_ms);
  p.latency_ms = a.cpu_latency_ms;
  print_moectl_cpu_plan(c, p);
}

std::vector<std::string> preset_dirs(const PlanArgs& a) {
  std::vector<std::string> dirs;
  if (!a.gpu_presets.empty()) dirs.push_back(a.gpu_presets);
  if (const char* env = std::getenv("MOECTL_GPU_PRESETS")) dirs.push_back(env);
  dirs.push_back("configs/gpus");
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec)
    for (fs::path p = exe.parent_path(); !p.empty() && p != p.root_path(); p = p.parent_path())
      dirs.push_back((p / "configs" / "gpus").string());
  return dirs;
}

Cluster cluster_from_args(const PlanArgs& a, bool gpu_given) {
  if (a.nnodes < 1) moe::throw_input("--nnodes {}: the cluster needs at least 1 node", a.nnodes);
  if (a.nproc_per_node < 1)
    moe::throw_input("--nproc_per_node {}: the cluster needs at least 1 GPU per node", a.nproc_per_node);
  if (a.nproc_per_node > kMaxGpusPerNode)
    moe::throw_input("--nproc_per_node {}: at most {} GPUs per node (one NVLink domain)", a.nproc_per_node,
                     kMaxGpusPerNode);
  // Both are at least 1, so this division tests nnodes x nproc_per_node <= kMaxGpus without overflow.
  if (a.nnodes > kMaxGpus / a.nproc_per_node)
    moe::throw_input("--nnodes {} x --nproc_per_node {}: plans are made for at most {} GPUs", a.nnodes,
                     a.nproc_per_node, kMaxGpus);
  Cluster c;
  c.nnodes = int(a.nnodes);
  c.nproc_per_node = int(a.nproc_per_node);
  const bool all_explicit = a.gpu_memory_gib && a.gpu_tflops && a.intra_node_gbps && a.inter_node_gbps;
  if (gpu_given || !all_explicit) {
    c.gpu = find_gpu_preset(a.gpu, preset_dirs(a));
  } else {
    c.gpu.name = "custom GPU";
    c.gpu.hbm_gbps = 3350;  // H100-class unless --hbm_gbps says otherwise
  }
  auto set = [](const std::optional<double>& v, double* field, const char* flag) {
    if (!v) return;
    if (!(*v > 0)) moe::throw_input("{} {}: must be > 0", flag, *v);
    *field = *v;
  };
  set(a.gpu_memory_gib, &c.gpu.memory_gib, "--gpu_memory_gib");
  set(a.gpu_tflops, &c.gpu.bf16_tflops, "--gpu_tflops");
  set(a.intra_node_gbps, &c.gpu.intra_node_gbps, "--intra_node_gbps");
  set(a.inter_node_gbps, &c.gpu.inter_node_gbps, "--inter_node_gbps");
  set(a.hbm_gbps, &c.gpu.hbm_gbps, "--hbm_gbps");
  return c;
}

TrainingOptions training_from_args(const PlanArgs& a, const Cluster& c) {
  TrainingOptions t;
  // Far above real runs (1M-token contexts, batches of tens of thousands), and their product stays
  // exact in int64 and double.
  constexpr int64_t kMaxSeq = int64_t(1) << 24, kMaxBatch = int64_t(1) << 24;
  if (a.seq_length < 1 || a.seq_length > kMaxSeq)
    moe::throw_input("--seq_length {}: must be from 1 to {}", a.seq_length, kMaxSeq);
  if (a.global_batch_size < 1 || a.global_batch_size > kMaxBatch)
    moe::throw_input("--global_batch_size {}: must be from 1 to {}", a.global_batch_size, kMaxBatch);
  t.seq_length = a.seq_length;
  t.global_batch_size = a.global_batch_size;
  t.use_distributed_optimizer = a.dist_opt;
  const bool fp8 = !a.fp8.empty() && a.fp8 != "false" && a.fp8 != "none";
  if (fp8 && a.fp8 != "e4m3" && a.fp8 != "hybrid" && a.fp8 != "true")
    moe::throw_input("--fp8 '{}': expected e4m3, hybrid, true or false", a.fp8);
  if (fp8 && !(c.gpu.fp8_tflops > 0))
    moe::throw_input("--fp8 {}: {} has no FP8 tensor cores (drop --fp8)", a.fp8, c.gpu.name);
  t.precision = fp8 ? Precision::kFp8 : a.bf16 ? Precision::kBf16 : Precision::kFp32;
  if (a.dispatcher != "alltoall" && a.dispatcher != "allgather" && a.dispatcher != "flex")
    moe::throw_input("--moe_token_dispatcher_type '{}': expected alltoall, allgather or flex", a.dispatcher);
  t.dispatcher = a.dispatcher == "allgather" ? Dispatcher::kAllGather
                 : a.dispatcher == "flex"    ? Dispatcher::kFlex
                                             : Dispatcher::kAllToAll;
  if (a.capacity_factor) {
    if (!(*a.capacity_factor > 0)) moe::throw_input("--moe_expert_capacity_factor {}: must be > 0", *a.capacity_factor);
    t.moe_expert_capacity_factor = *a.capacity_factor;
  }
  if (!(a.imbalance >= 1)) moe::throw_input("--moe_imbalance_factor {}: must be >= 1", a.imbalance);
  t.moe_imbalance_factor = a.imbalance;
  t.allow_sequence_parallel = a.sequence_parallel;
  if (a.make_vocab_divisible < 1 || a.make_vocab_divisible > 65536)
    moe::throw_input("--make_vocab_size_divisible_by {}: must be from 1 to 65536", a.make_vocab_divisible);
  t.make_vocab_size_divisible_by = a.make_vocab_divisible;
  return t;
}

FixedSizes fixed_from_args(const PlanArgs& a, const ModelShape& m, const Cluster& c) {
  FixedSizes f;
  const int W = c.world();
  auto check = [&](const std::optional<int>& v, const char* flag, int must_divide, const char* what) {
    if (!v) return;
    if (*v < 1) moe::throw_input("{} {}: must be >= 1", flag, *v);
    if (must_divide > 0 && must_divide % *v != 0)
      moe::throw_input("{} {} does not divide {} {} (choose a divisor)", flag, *v, what, must_divide);
  };
  check(a.tp, "--tensor_model_parallel_size", W, "the number of GPUs");
  check(a.pp, "--pipeline_model_parallel_size", W, "the number of GPUs");
  check(a.cp, "--context_parallel_size", W, "the number of GPUs");
  check(a.ep, "--expert_model_parallel_size", W, "the number of GPUs");
  if (a.ep && *a.ep > 1 && !m.is_moe())
    moe::throw_input("--expert_model_parallel_size {}: the model has no experts", *a.ep);
  if (m.is_moe()) check(a.ep, "--expert_model_parallel_size", m.num_experts, "the number of experts");
  check(a.etp, "--expert_tensor_parallel_size", W, "the number of GPUs");
  check(a.vpp, "--virtual_pipeline_model_parallel_size", 0, "");
  check(a.mbs, "--micro_batch_size", int(std::min<int64_t>(a.global_batch_size, 1 << 30)), "--global_batch_size");
  f.tp = a.tp;
  f.pp = a.pp;
  f.vpp = a.vpp;
  f.ep = a.ep;
  f.etp = a.etp;
  f.cp = a.cp;
  f.micro_batch_size = a.mbs;
  if (!m.is_moe() && !f.ep) f.ep = 1;
  if (!a.recompute.empty()) {
    Recompute r;
    if (!parse_recompute(a.recompute, &r))
      moe::throw_input("--recompute_granularity '{}': expected none, selective or full", a.recompute);
    f.recompute = r;
  }
  return f;
}

double gib(double b) { return b / kGiB; }

std::string megatron_flags(const Layout& l, const TrainingOptions& t, const ModelShape& m) {
  std::string s = fmt::format("--tensor_model_parallel_size {} --pipeline_model_parallel_size {}", l.tp, l.pp);
  if (l.vpp > 1) s += fmt::format(" --virtual_pipeline_model_parallel_size {}", l.vpp);
  PipelineSplit split;
  if (split_pipeline(m.num_layers, l.pp, l.vpp, &split) && !split.even())
    s += fmt::format(" --decoder_first_pipeline_num_layers {} --decoder_last_pipeline_num_layers {}",
                     stage_layers(m, l, 0).layers, stage_layers(m, l, l.pp - 1).layers);
  if (m.is_moe()) s += fmt::format(" --expert_model_parallel_size {} --expert_tensor_parallel_size {}", l.ep, l.etp);
  if (l.cp > 1) s += fmt::format(" --context_parallel_size {}", l.cp);
  s += fmt::format(" --sequence_parallel {}", l.sequence_parallel ? "true" : "false");
  s += fmt::format(" --micro_batch_size {} --global_batch_size {} --seq_length {}", l.micro_batch_size,
                   t.global_batch_size, t.seq_length);
  if (l.recompute == Recompute::kFull)
    s += " --recompute_granularity full --recompute_method uniform --recompute_num_layers 1";
  else if (l.recompute == Recompute::kSelective)
    s += m.is_moe() ? " --recompute_granularity selective --recompute_modules core_attn layernorm moe_act"
                    : " --recompute_granularity selective --recompute_modules core_attn layernorm";
  s += fmt::format(" --use_distributed_optimizer {}", t.use_distributed_optimizer ? "true" : "false");
  return s;
}

nlohmann::json layout_json(const Candidate& c) {
  const StageMemory& s = c.memory.peak();
  const Layout& l = c.layout;
  nlohmann::json j = {{"tp", l.tp},
                      {"pp", l.pp},
                      {"vpp", l.vpp},
                      {"ep", l.ep},
                      {"etp", l.etp},
                      {"cp", l.cp},
                      {"dp", l.dp},
                      {"micro_batch_size", l.micro_batch_size},
                      {"recompute", to_string(l.recompute)},
                      {"fits", c.fits}};
  j["memory_gib"] = {{"total", gib(s.total())},           {"weights", gib(s.weights)},
                     {"gradients", gib(s.gradients)},     {"optimizer", gib(s.optimizer)},
                     {"activations", gib(s.activations)}, {"other", gib(s.other)}};
  j["step_time_s"] = c.time.step_s;
  j["tokens_per_s_per_gpu"] = c.time.tokens_per_s_per_gpu;
  j["mfu"] = c.time.mfu;
  j["excluded_by"] = c.fits ? nlohmann::json(nullptr) : nlohmann::json(c.excluded_by);
  return j;
}

void print_table(const std::vector<const Candidate*>& rows) {
  std::printf("%4s %3s %3s %3s %3s %3s %3s %4s %3s %-9s %7s %6s %6s %6s %6s %6s %9s %9s %6s %7s\n", "rank", "TP", "PP",
              "VPP", "EP", "ETP", "CP", "DP", "mbs", "recompute", "GiB", "wgt", "grad", "optim", "act", "other",
              "step s", "tok/s/gpu", "MFU", "bubble");
  int rank = 0;
  for (const Candidate* c : rows) {
    const StageMemory& s = c->memory.peak();
    const Layout& l = c->layout;
    std::printf(
        "%4s %3d %3d %3d %3d %3d %3d %4d %3d %-9s %7.1f %6.1f %6.1f %6.1f %6.1f %6.1f %9.3f %9.0f %5.1f%% %6.1f%%\n",
        c->fits ? std::to_string(++rank).c_str() : "-", l.tp, l.pp, l.vpp, l.ep, l.etp, l.cp, l.dp, l.micro_batch_size,
        to_string(l.recompute), gib(s.total()), gib(s.weights), gib(s.gradients), gib(s.optimizer), gib(s.activations),
        gib(s.other), c->time.step_s, c->time.tokens_per_s_per_gpu, 100 * c->time.mfu, 100 * c->time.bubble_fraction);
  }
}

void print_explain(const Candidate& c, const ModelShape& m, const TrainingOptions& t, const Cluster& cl) {
  const Layout& l = c.layout;
  std::printf("layout %s on %d x %s (%d node%s x %d)\n", to_string(l).c_str(), cl.world(), cl.gpu.name.c_str(),
              cl.nnodes, cl.nnodes == 1 ? "" : "s", cl.nproc_per_node);
  std::printf("  sequence parallel %s, expert-DP %d, %lld micro-batches per step, seq %lld, global batch %lld\n",
              l.sequence_parallel ? "on" : "off", l.edp(), (long long)num_microbatches(l, t), (long long)t.seq_length,
              (long long)t.global_batch_size);
  std::printf("  links: TP %s, CP %s, DP %s, PP %s, EP %s, expert-DP %s\n", c.time.tp_link, c.time.cp_link,
              c.time.dp_link, c.time.pp_link, c.time.ep_link, c.time.edp_link);
  std::printf("memory per GPU (GiB; %s %.1f GiB: %s)\n", cl.gpu.name.c_str(), cl.gpu.memory_gib,
              c.fits ? "fits" : "does NOT fit");
  auto stage = [&](const char* what, const StageMemory& s) {
    std::printf("  %s (stage %d): total %.2f\n", what, s.stage, gib(s.total()));
    std::printf("    parameters on this GPU: %.3fB dense/replicated + %.3fB expert\n", s.dense_params / 1e9,
                s.expert_params / 1e9);
    std::printf("    weights %.2f | gradients (fp32 main grads) %.2f | optimizer (fp32 master + Adam%s) %.2f\n",
                gib(s.weights), gib(s.gradients), t.use_distributed_optimizer ? ", distributed" : "", gib(s.optimizer));
    std::printf(
        "    activations %.2f = layers %.2f (%.1f layer-micro-batches in flight) + recompute working set %.2f "
        "+ dispatcher buffers %.2f + logits/loss %.2f\n",
        gib(s.activations), gib(s.act_layers), s.layer_microbatches, gib(s.act_working), gib(s.act_dispatcher),
        gib(s.act_logits));
    std::printf("    other %.2f = CUDA context/workspaces %.2f + NCCL %.2f + fragmentation %.2f\n", gib(s.other),
                gib(s.cuda_context), gib(s.nccl), gib(s.fragmentation));
  };
  stage("first stage", c.memory.first);
  if (l.pp > 1) stage("last stage", c.memory.last);
  auto per_layer = [&](const char* what, bool moe_layer) {
    const LayerActivations x = layer_activations(m, l, t, moe_layer, l.recompute);
    std::printf(
        "  one %s layer, one micro-batch (MiB): attention norm-in %.1f qkv-in %.1f q/k/v %.1f out %.1f | "
        "mlp norm-in %.1f fc1-in %.1f fc1-out %.1f act %.1f",
        what, x.attn_norm_in / 1048576, x.attn_qkv_in / 1048576, x.attn_qkv / 1048576, x.attn_out / 1048576,
        x.mlp_norm_in / 1048576, x.mlp_fc1_in / 1048576, x.mlp_fc1_out / 1048576, x.mlp_act_out / 1048576);
    if (moe_layer)
      std::printf(" | router %.1f permuted %.1f expert fc1-out %.1f expert act %.1f combine %.1f", x.router / 1048576,
                  x.expert_fc1_in / 1048576, x.expert_fc1_out / 1048576, x.expert_act_out / 1048576,
                  x.combine / 1048576);
    std::printf(" | total %.1f\n", x.total() / 1048576);
  };
  if (m.num_moe_layers()) per_layer("MoE", true);
  if (m.num_moe_layers() < m.num_layers) per_layer("dense", false);
  const TimeEstimate& tm = c.time;
  const StageTime& s = tm.microbatch;
  std::printf(
      "time (slowest stage %d, per micro-batch, ms): compute %.2f, recompute %.2f, memory-bound %.2f, TP/SP "
      "%.2f, CP %.2f, EP all-to-all %.2f, MoE routing overhead %.2f, PP p2p %.2f = %.2f\n",
      tm.slowest_stage, 1e3 * s.compute, 1e3 * s.recompute, 1e3 * s.memory_bound, 1e3 * s.tp_comm, 1e3 * s.cp_comm,
      1e3 * s.ep_comm, 1e3 * s.moe_overhead, 1e3 * s.pp_p2p, 1e3 * s.total());
  std::printf(
      "step: %lld micro-batches x %.2f ms + bubble %.3f s (%.1f%%) + DP exposed %.3f s (of %.3f s, overlapped "
      "with backward/forward) + optimizer %.3f s = %.3f s\n",
      (long long)tm.microbatches, 1e3 * s.total(), tm.bubble_s, 100 * tm.bubble_fraction, tm.dp_exposed_s, tm.dp_comm_s,
      tm.optimizer_s, tm.step_s);
  std::printf("throughput: %.0f tokens/s/GPU, %.1f TFLOP/s/GPU (Megatron model FLOPs %.2f GFLOP/token), MFU %.1f%%\n",
              tm.tokens_per_s_per_gpu, tm.tflops_per_gpu,
              tm.model_flops_per_step / double(t.global_batch_size * t.seq_length) / 1e9, 100 * tm.mfu);
  std::printf("flags: %s\n", megatron_flags(l, t, m).c_str());
}

void run_plan(const PlanArgs& a, bool gpu_given) {
  if (a.cpu_probe_links) return print_cpu_link_probe();
  if (!a.moectl_cpu_layout.empty()) return run_moectl_cpu_plan(a);
  ModelShape m;
  if (!a.model.empty()) {
    m = ModelShape::from_config(moe::model::load_hf_config(a.model));
  } else {
    m = shape_from_flags(a);
  }
  const Cluster c = cluster_from_args(a, gpu_given);
  const TrainingOptions t = training_from_args(a, c);
  const FixedSizes f = fixed_from_args(a, m, c);
  Recompute default_rc = f.recompute.value_or(Recompute::kNone);

  if (!a.explain.empty()) {
    Layout l = parse_layout(a.explain, "--explain", c.world(), a.mbs.value_or(1), default_rc);
    if (!t.allow_sequence_parallel) l.sequence_parallel = false;
    const std::string bad = invalid_reason(m, l, t, c);
    if (!bad.empty()) moe::throw_input("--explain {}: not a valid layout: {}", a.explain, bad);
    print_explain(evaluate(m, l, t, c), m, t, c);
    return;
  }
  if (!a.why_not.empty()) {
    Layout l = parse_layout(a.why_not, "--why_not", c.world(), a.mbs.value_or(1), default_rc);
    if (!t.allow_sequence_parallel) l.sequence_parallel = false;
    std::fputs(why_not(m, l, t, c).c_str(), stdout);
    return;
  }

  const auto t0 = std::chrono::steady_clock::now();
  const size_t keep = a.top > 0 ? size_t(a.top) : 1000000;
  SearchResult r = search_layouts(m, t, c, f, keep, keep);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<const Candidate*> rows;
  if (f.all_parallel_fixed()) {
    rows.push_back(!r.fitting.empty() ? &r.fitting[0] : &r.excluded.at(0));
  } else {
    for (size_t i = 0; i < r.fitting.size() && (a.top <= 0 || i < size_t(a.top)); ++i) rows.push_back(&r.fitting[i]);
    for (size_t i = 0; i < r.excluded.size() && (a.top <= 0 || i < size_t(a.top)); ++i) rows.push_back(&r.excluded[i]);
  }
  const bool best_fits = !rows.empty() && rows[0]->fits;
  if (a.json) {
    nlohmann::json layouts = nlohmann::json::array();
    for (const Candidate* c2 : rows) layouts.push_back(layout_json(*c2));
    nlohmann::json out = {{"layouts", layouts}, {"best", best_fits ? nlohmann::json(0) : nlohmann::json(nullptr)}};
    std::printf("%s\n", out.dump(2).c_str());
    return;
  }
  std::printf("model: %d layers, hidden %d, %s%.2fB parameters; %d x %s (%d node%s x %d), %.1f GiB each\n",
              m.num_layers, m.hidden_size,
              m.is_moe() ? fmt::format("{} experts top-{}, ", m.num_experts, m.moe_router_topk).c_str() : "",
              double(m.num_parameters()) / 1e9, c.world(), c.gpu.name.c_str(), c.nnodes, c.nnodes == 1 ? "" : "s",
              c.nproc_per_node, c.gpu.memory_gib);
  if (!a.cluster_given)  // QA: the default cluster was assumed without a word
    std::printf("cluster: the default (1 node x 8 %s); pass --nnodes, --nproc_per_node and --gpu for yours\n",
                c.gpu.name.c_str());
  std::printf(
      "training: seq %lld, global batch %lld, %s, %s optimizer; searched %lld valid layouts in %.3f s: %lld fit\n",
      (long long)t.seq_length, (long long)t.global_batch_size,
      t.precision == Precision::kFp8    ? "fp8"
      : t.precision == Precision::kBf16 ? "bf16"
                                        : "fp32",
      t.use_distributed_optimizer ? "distributed" : "replicated", (long long)r.enumerated, secs,
      (long long)r.fitting_count);
  print_table(rows);
  if (best_fits) {
    std::printf("\nbest: %s\nflags: %s\n", to_string(rows[0]->layout).c_str(),
                megatron_flags(rows[0]->layout, t, m).c_str());
  } else {
    std::printf("\nno layout fits.\n");
    std::fputs(why_not(m, rows.at(0)->layout, t, c).c_str(), stdout);
  }
}

}  // namespace

void add_plan_command(CLI::App& root) {
  auto a = std::make_shared<PlanArgs>();
  CLI::App* c = root.add_subcommand(
      "plan",
      "Find the parallel layout that fits and trains fastest.\n"
      "LAYOUT (for --explain / --why_not): comma-separated keys tpN,ppN,vppN,epN,etpN,cpN,dpN,mbsN,recompute=none|"
      "selective|full, e.g. tp2,pp4,ep8,etp1,cp1,vpp1,mbs1,recompute=full; missing keys: sizes 1, etp = tp, dp from the "
      "GPU count, mbs and recompute from --micro_batch_size / --recompute_granularity (else 1, none).");
  c->add_option("--model", a->model, "HF model directory or config.json (or give the Megatron-style size flags)");
  c->add_option("--nnodes", a->nnodes, "Nodes in the cluster");
  c->add_option("--nproc_per_node", a->nproc_per_node, "GPUs per node");
  auto* gpu = c->add_option("--gpu", a->gpu,
                            "GPU preset from configs/gpus/ (H100-SXM-80G, H200-141G, A100-80G, "
                            "A800-80G, H800-80G, L40S-48G, H20-96G) or a preset .json path");
  c->add_option("--gpu_presets", a->gpu_presets, "Directory of GPU preset .json files (default: configs/gpus)");
  c->add_option("--gpu_memory_gib", a->gpu_memory_gib, "GPU memory in GiB (overrides the preset)");
  c->add_option("--gpu_tflops", a->gpu_tflops, "Dense BF16 peak TFLOP/s per GPU (overrides the preset)");
  c->add_option("--intra_node_gbps", a->intra_node_gbps,
                "Achievable NVLink bandwidth per GPU per direction inside a node, in GB/s (bytes)");
  c->add_option("--inter_node_gbps", a->inter_node_gbps,
                "Achievable network bandwidth per GPU per direction across nodes, in GB/s (bytes; 400 Gb/s NIC = 50)");
  c->add_option("--hbm_gbps", a->hbm_gbps, "GPU memory bandwidth in GB/s (overrides the preset)");
  c->add_option("--seq_length", a->seq_length, "Sequence length");
  c->add_option("--global_batch_size", a->global_batch_size, "Sequences per optimizer step (default 1024)");
  c->add_option("--micro_batch_size", a->mbs, "Micro-batch size (searched over 1, 2, 4, 8 if not given)");
  c->add_option("--recompute_granularity", a->recompute, "none | selective | full (searched if not given)");
  c->add_option("--use_distributed_optimizer", a->dist_opt, "Shard fp32 master weights and Adam over DP (true|false)");
  c->add_option("--bf16", a->bf16, "BF16 mixed precision (true); false = fp32 training");
  c->add_option("--fp8", a->fp8, "FP8 GEMMs: e4m3 | hybrid (default off)");
  c->add_option("--moe_token_dispatcher_type", a->dispatcher, "alltoall | allgather | flex (DeepEP)");
  c->add_option("--moe_expert_capacity_factor", a->capacity_factor,
                "Token-dropping capacity factor (default: dropless)");
  c->add_option("--moe_imbalance_factor", a->imbalance,
                "Dropless routing: most-loaded expert rank's tokens over the mean, for memory (default 1.1)");
  c->add_option("--sequence_parallel", a->sequence_parallel, "Allow sequence parallel with TP > 1 (true|false)");
  c->add_option("--make_vocab_size_divisible_by", a->make_vocab_divisible, "Vocabulary padding (x TP)");
  c->add_option("--tensor_model_parallel_size", a->tp, "Fix TP");
  c->add_option("--pipeline_model_parallel_size", a->pp, "Fix PP");
  c->add_option("--virtual_pipeline_model_parallel_size", a->vpp, "Fix virtual pipeline stages per PP rank");
  c->add_option("--expert_model_parallel_size", a->ep, "Fix EP");
  c->add_option("--expert_tensor_parallel_size", a->etp, "Fix expert TP (ETP)");
  c->add_option("--context_parallel_size", a->cp, "Fix CP");
  c->add_option("--top", a->top, "Layouts shown (fitting, then the nearest excluded); 0 = all");
  c->add_flag("--json", a->json, "Machine-readable output: {\"layouts\": [...], \"best\": index}");
  c->add_option("--explain", a->explain, "Full memory and time breakdown of one LAYOUT");
  c->add_option("--why_not", a->why_not, "Which rule or limit excludes LAYOUT, and what fits instead");
  c->add_option("--moectl_cpu_layout", a->moectl_cpu_layout,
                "moectl's own CPU engine training LAYOUT as an mpirun job: each rank's memory growth and step time "
                "(JSON; --seq_length, --global_batch_size, --micro_batch_size, --recompute_granularity (default "
                "selective, as moectl pt), --use_distributed_optimizer, --sequence_parallel as for training)");
  c->add_option("--cpu_step_s", a->cpu_step_s,
                "Measured seconds per step of the same model and batch on one process, with as many processes busy "
                "as the layout has ranks: calibrates --moectl_cpu_layout's compute rate (without it: memory only)");
  c->add_option("--cpu_link_gbps", a->cpu_link_gbps,
                "Collective payload rate between CPU ranks in GB/s (default 4; --cpu_probe_links measures it)");
  c->add_option("--cpu_collective_latency_ms", a->cpu_latency_ms,
                "Fixed cost of one collective between CPU ranks in ms (default 0.05; --cpu_probe_links measures it)");
  c->add_option("--cpu_threads", a->cpu_threads, "Worker threads per CPU rank (default 1, as under mpirun)");
  c->add_flag("--cpu_probe_links", a->cpu_probe_links,
              "Under mpirun: measure this machine's collective latency and bandwidth between the ranks (JSON)");
  c->add_option("--num_layers", a->num_layers, "Model size flag (without --model)");
  c->add_option("--hidden_size", a->hidden_size, "Model size flag");
  c->add_option("--ffn_hidden_size", a->ffn_hidden_size, "Model size flag (dense MLP width)");
  c->add_option("--num_attention_heads", a->num_attention_heads, "Model size flag");
  c->add_option("--num_query_groups", a->num_query_groups, "Model size flag (key/value heads; default = heads)");
  c->add_option("--kv_channels", a->kv_channels, "Model size flag (head dim; default hidden/heads)");
  c->add_option("--vocab_size", a->vocab_size, "Model size flag");
  c->add_option("--num_experts", a->num_experts, "Model size flag (0 = dense)");
  c->add_option("--moe_ffn_hidden_size", a->moe_ffn_hidden_size, "Model size flag");
  c->add_option("--moe_router_topk", a->moe_router_topk, "Model size flag");
  c->add_option("--moe_shared_expert_intermediate_size", a->moe_shared_expert_intermediate_size, "Model size flag");
  c->add_option("--swiglu", a->swiglu, "Model size flag: gated MLP (true) or 2-matrix GeLU MLP (false)");
  c->add_option("--untie_embeddings_and_output_weights", a->untie, "Model size flag (true|false)");
  c->add_option("--qk_layernorm", a->qk_layernorm, "Model size flag (true|false)");
  c->callback([a, gpu, c] {
    a->cluster_given = gpu->count() > 0 || c->count("--nnodes") > 0 || c->count("--nproc_per_node") > 0;
    run_plan(*a, gpu->count() > 0);
  });
}

}  // namespace moectl
