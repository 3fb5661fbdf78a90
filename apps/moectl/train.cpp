// `moectl pt` and `moectl sft`: training with Megatron-SWIFT's flags (3.x names as in its quick
// start, 4.x names as aliases): load or initialise the model, build the dataset, run the loop in
// libmoe/train, save Megatron checkpoints (+ HF safetensors). On one process, or as one rank of a
// data-parallel job started by mpirun/srun (or by NPROC_PER_NODE, see main.cpp): every rank reads
// the inputs, world rank 0 alone makes the run dir and writes every file.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include <fmt/ranges.h>

#include "architecture_flags.h"
#include "checkpoint/mcore_export.h"
#include "commands.h"
#include "core/allocator.h"
#include "core/error.h"
#include "core/log.h"
#include "core/mapped_file.h"
#include "core/output_dir.h"
#include "dist/collective_clock.h"
#include "dist/launch.h"
#include "dist/mpi_communicator.h"
#include "dist/process_groups.h"
#include "megatron_knobs.h"
#include "model/hf_config.h"
#include "model/init_weights.h"
#include "text/chat_template.h"
#include "train/metrics.h"
#include "train/run_dir.h"
#include "train/trainer.h"

namespace moectl {

namespace fs = std::filesystem;

namespace {

struct TrainArgs {
  bool pretrain = false;
  std::string model, load, save, system, tem, torch_dtype;
  bool system_given = false, finetune = true, add_version = true, packing = false, save_safetensors = true;
  bool overwrite_output_dir = false;
  std::string recompute_granularity = "selective";
  int64_t seed = 42;
  bool no_save_optim = false, no_save_rng = false, no_load_optim = false, no_load_rng = false;
  double init_method_std = 0.02;
  std::string ckpt_format = "torch_dist";
  int thread_count = 2;
  std::vector<std::string> dataset, val_dataset, model_name, model_author;
  double split_dataset_ratio = 0;
  int max_length = 2048;
  std::string truncation_strategy = "delete";
  moe::train::TrainerConfig t;
  moe::model::TrainOptions m;
  // Megatron's parallel sizes; data parallel is what the world leaves.
  int tp = 1, pp = 1, ep = 1, etp = 0, cp = 1, vpp = 1;
  int first_stage_layers = 0, last_stage_layers = 0;  // --decoder_first/last_pipeline_num_layers (0: even)
  int layers_per_virtual_stage = 0;                   // --num_layers_per_virtual_pipeline_stage
  bool sequence_parallel = false;                     // Megatron ignores it with TP 1
  bool use_distributed_optimizer = true;
  bool overlap_grad_reduce = false, overlap_param_gather = false;  // swift's defaults
  int64_t ddp_bucket_size = 0;                                     // 0: Megatron's default, max(40M, 1M x DP) elements
  MegatronKnobs knobs;
  std::string tensorboard_dir;  // "": <run dir>/runs, as swift
  bool no_log_learning_rate_to_tensorboard = false;
  int seq_length = 0;                      // Megatron's; 0: --max_length, as swift sets it
  int dataset_num_proc = 1;                // threads that tokenise the dataset (swift: processes)
  bool exit_on_missing_checkpoint = true;  // swift's default; false: --load without one starts randomly
  bool streaming = false;                  // --streaming: the dataset read lazily, in order (train::SampleStream)
  // --moe_router_load_balancing_type and --moe_aux_loss_coeff as Megatron-Core takes them: lists,
  // one coefficient per balancing type (no coefficient given: 0, swift's default).
  std::vector<std::string> balancing_types = {"aux_loss"};
  std::vector<double> aux_loss_coeffs;
  ArchitectureFlags architecture;
  double distributed_timeout_minutes = 10;  // Megatron's default
};

// The job's layout on `world` ranks, refused up front (on every rank, with the same line) when
// the sizes do not fit the world or need a parallelism this version does not train with yet.
// `num_layers` (the model's) turns --num_layers_per_virtual_pipeline_stage into Megatron's
// virtual size: the layers of a stage over the layers of a chunk.
moe::dist::ParallelLayout parallel_layout(const TrainArgs& a, int world, int num_layers) {
  int vpp = a.vpp;
  if (a.layers_per_virtual_stage != 0) {
    if (a.pp < 2)
      moe::throw_input(
          "--num_layers_per_virtual_pipeline_stage {} needs --pipeline_model_parallel_size > 1 (interleaving splits a "
          "pipeline)",
          a.layers_per_virtual_stage);
    const int n = a.layers_per_virtual_stage, per_stage = num_layers / a.pp;
    if (n < 1 || num_layers % a.pp != 0 || per_stage % n != 0)
      moe::throw_input(
          "--num_layers_per_virtual_pipeline_stage {} must divide the {} layers of each of --pipeline_model_parallel_size "
          "{} stages (num_hidden_layers {})",
          n, double(num_layers) / a.pp, a.pp, num_layers);
    if (a.vpp > 1 && a.vpp != per_stage / n)
      moe::throw_input(
          "--virtual_pipeline_model_parallel_size {} and --num_layers_per_virtual_pipeline_stage {} disagree ({} "
          "layers per stage make {} chunks); give one of them",
          a.vpp, n, per_stage, per_stage / n);
    vpp = per_stage / n;
  }
  auto l = moe::dist::ParallelLayout::from_flags(world, a.tp, a.pp, a.ep, a.etp, a.cp, vpp);
  l.first_stage_layers = a.first_stage_layers, l.last_stage_layers = a.last_stage_layers;
  // Context parallelism splits every sequence's rows over the CP group; attention gathers the
  // keys and values over it. The per-sequence balancing loss would need per-sequence loads over CP.
  if (l.cp > 1 && a.m.moe.load_balancing_type == "seq_aux_loss" && a.m.moe.aux_loss_coeff > 0)
    moe::throw_input(
        "--context_parallel_size {} with --moe_router_load_balancing_type seq_aux_loss: the per-sequence balancing "
        "loss over sequences split across CP ranks is not implemented yet; use aux_loss (or a coefficient of 0)",
        l.cp);
  // MoE parallel folding routes each TP rank's rows of the sequence; with CP those rows would be a
  // TP share of a CP share, which the router's row ranges do not describe yet.
  if (l.cp > 1 && l.tp > 1 && l.etp != l.tp)
    moe::throw_input(
        "--context_parallel_size {} with --tensor_model_parallel_size {} and --expert_tensor_parallel_size {}: context "
        "parallelism with MoE parallel folding is not implemented yet (leave --expert_tensor_parallel_size out)",
        l.cp, l.tp, l.etp);
  // Megatron's rule: tensor with expert parallelism (or experts not split like the dense layers)
  // needs sequence parallelism, each TP rank routing its own rows of the sequence.
  if (l.tp > 1 && (l.ep > 1 || l.etp != l.tp) && !a.sequence_parallel)
    moe::throw_input(
        "--tensor_model_parallel_size {} with --expert_model_parallel_size {} (--expert_tensor_parallel_size {}) needs "
        "--sequence_parallel true: each TP rank routes its own rows of the sequence, as Megatron requires",
        l.tp, l.ep, l.etp);
  // Experts split like the dense layers (ETP = TP, Megatron's default: every TP rank routes every
  // token, the EP group holds one TP rank's slices), or MoE parallel folding with ETP 1 (whole
  // experts, each TP rank routing its own rows over the EP group).
  if (l.etp != l.tp && l.etp != 1)
    moe::throw_input(
        "--expert_tensor_parallel_size {} with --tensor_model_parallel_size {}: expert tensor parallelism is "
        "implemented as TP (leave the flag out) or 1 (MoE parallel folding)",
        l.etp, l.tp);
  if (const auto& d = a.m.moe.token_dispatcher; d != "alltoall" && d != "allgather")
    moe::throw_input("--moe_token_dispatcher_type {}: not one of alltoall (the default), allgather", d);
  return l;
}

moe::DType dtype_from(const std::string& s, moe::DType fallback) {
  if (s.empty()) return fallback;
  if (s == "bfloat16") return moe::DType::BF16;
  if (s == "float16") return moe::DType::F16;
  if (s == "float32") return moe::DType::F32;
  moe::throw_input("--torch_dtype '{}' is not one of bfloat16, float16, float32", s);
}

// Megatron-Core's lists of balancing types and their coefficients, into the one type moectl's
// router computes: one line when the lengths differ (naming both flags) or for several types.
void set_load_balancing(TrainArgs& a) {
  const auto& types = a.balancing_types;
  const auto& coeffs = a.aux_loss_coeffs;
  if (types.empty()) moe::throw_input("--moe_router_load_balancing_type needs a value (aux_loss, seq_aux_loss, none)");
  if (!coeffs.empty() && coeffs.size() != types.size())
    moe::throw_input(
        "--moe_aux_loss_coeff has {} value(s) ({}) but --moe_router_load_balancing_type has {} ({}): give one "
        "coefficient per balancing type",
        coeffs.size(), fmt::join(coeffs, " "), types.size(), fmt::join(types, " "));
  if (types.size() > 1)
    moe::throw_input(
        "--moe_router_load_balancing_type {}: several balancing types at once are not in moectl yet (give one of "
        "aux_loss, seq_aux_loss, none, with one --moe_aux_loss_coeff)",
        fmt::join(types, " "));
  a.m.moe.load_balancing_type = types.front();
  a.m.moe.aux_loss_coeff = coeffs.empty() ? 0.0 : coeffs.front();
}

// Every number a flag gives, checked once before any work: one line naming the flag and the
// range (QA #3, #4, #10, #15). The optimizer, schedule and MoE options check their own below.
void validate_flags(const TrainArgs& a, const CLI::App& c) {
  const auto& t = a.t;
  auto positive = [](const char* flag, int64_t v) {
    if (v < 1) moe::throw_input("{} must be >= 1, got {}", flag, v);
  };
  if (c.count("--train_iters")) positive("--train_iters", t.train_iters);
  positive("--max_epochs", t.max_epochs);
  positive("--micro_batch_size", t.micro_batch_size);
  positive("--global_batch_size", t.global_batch_size);
  if (t.global_batch_size % t.micro_batch_size != 0)
    moe::throw_input("--global_batch_size {} must be a multiple of --micro_batch_size {}", t.global_batch_size,
                     t.micro_batch_size);
  positive("--log_interval", t.log_interval);
  positive("--max_length", a.max_length);
  positive("--tensorboard_log_interval", t.tensorboard.log_interval);
  if (c.count("--seq_length")) {
    // swift: seq_length defaults to max_length, and --max_length is what limits a sample: one
    // below --max_length could not hold the samples.
    positive("--seq_length", a.seq_length);
    if (a.seq_length < a.max_length)
      moe::throw_input(
          "--seq_length {} is below --max_length {}: samples are cut to --max_length; leave "
          "--seq_length out or make it at least --max_length",
          a.seq_length, a.max_length);
  }
  if (a.streaming && !c.count("--train_iters"))
    moe::throw_input(
        "--streaming true needs --train_iters: a stream's length is not known before it is read, so --max_epochs "
        "cannot set the iterations");
  if (c.count("--dataloader_type") && a.knobs.names.count("dataloader_type") &&
      a.knobs.names.at("dataloader_type") == "external" && !a.streaming)
    moe::throw_input(
        "--dataloader_type external is swift's loader for --streaming true: pass --streaming true too, or leave "
        "--dataloader_type out");
  if (a.streaming && a.packing)
    moe::throw_input(
        "--streaming true with --packing true: packing bin-packs the whole dataset before training, which a stream "
        "never holds; leave one of them out");
  if (t.save_interval < 0)
    moe::throw_input("--save_interval must be >= 1 (0: only at the end), got {}", t.save_interval);
  if (t.eval_interval < 0)
    moe::throw_input("--eval_interval must be >= 1 (0: only at the end), got {}", t.eval_interval);
  if (t.eval_iters < 1 && t.eval_iters != -1)
    moe::throw_input("--eval_iters must be >= 1 (-1: the whole validation set), got {}", t.eval_iters);
  if (!(t.clip_grad >= 0 && std::isfinite(t.clip_grad)))
    moe::throw_input("--clip_grad must be a finite number >= 0 (0: off), got {}", t.clip_grad);
  if (!(a.init_method_std > 0 && std::isfinite(a.init_method_std)))
    moe::throw_input("--init_method_std must be a finite number > 0, got {}", a.init_method_std);
  if (!(a.split_dataset_ratio >= 0 && a.split_dataset_ratio < 1))
    moe::throw_input("--split_dataset_ratio must be in [0, 1), got {}", a.split_dataset_ratio);
  if (a.seed < 0) moe::throw_input("--seed must be >= 0, got {}", a.seed);
  if (c.count("--moe_expert_capacity_factor") && !(a.m.moe.capacity_factor > 0))
    moe::throw_input("--moe_expert_capacity_factor must be a finite number > 0 (leave it out for dropless), got {}",
                     a.m.moe.capacity_factor);
  if (!a.model.empty() && !a.load.empty())
    moe::throw_input(
        "--model {} and --load {} both name the weights: pass --load MCORE_DIR for a Megatron "
        "checkpoint or --model HF_DIR, not both",
        a.model, a.load);
  if (moe::model::Recompute r; !moe::model::parse_recompute(a.recompute_granularity, &r))
    moe::throw_input("--recompute_granularity '{}' is not one of none, selective, full", a.recompute_granularity);
  if (c.count("--finetune") && !a.finetune && a.load.empty())
    moe::throw_input("--finetune false resumes a checkpoint and needs --load MCORE_DIR");
}

// `dir` given to --load/--model: a run's output root (holding vN-... runs) gets a hint.
void check_source(const std::string& flag, const std::string& dir) {
  if (fs::exists(fs::path(dir) / "config.json")) return;
  if (!fs::is_directory(dir)) moe::throw_input("{} {}: no such directory", flag, dir);
  std::string newest;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory() && fs::exists(e.path() / "config.json") && e.path().filename().string() > newest)
      newest = e.path().filename().string();
  if (!newest.empty())
    moe::throw_input("{} {}: no config.json; it holds runs: pass one of them, e.g. {} {}", flag, dir, flag,
                     (fs::path(dir) / newest).string());
  moe::throw_input("{} {}: no config.json (pass an HF model dir or a Megatron dir written by moectl)", flag, dir);
}

void run(const TrainArgs& a, const CLI::App& cli) {
  namespace model = moe::model;
  namespace checkpoint = moe::checkpoint;
  validate_flags(a, cli);
  refuse_missing_features(cli, a.knobs);
  // The job's ranks: MPI starts first, so a later error on any rank ends every rank (main.cpp).
  const auto launch = moe::dist::launch_env();
  std::unique_ptr<moe::dist::Communicator> world;
  if (launch.distributed()) {
    if (!(a.distributed_timeout_minutes > 0))
      moe::throw_input("--distributed_timeout_minutes must be > 0, got {}", a.distributed_timeout_minutes);
    world = moe::dist::MpiCommunicator::world();
    moe::dist::start_collective_watchdog(
        a.distributed_timeout_minutes * 60, [r = world->rank(), n = world->size()](const std::string& msg) {
          std::fprintf(stderr, "moectl: error (rank %d of %d): %s\n", r, n, msg.c_str());
          std::fflush(stderr);
          moe::dist::MpiCommunicator::abort_job(1);
        });
  }
  int num_layers = 0;  // only --num_layers_per_virtual_pipeline_stage needs the model's
  if (a.layers_per_virtual_stage != 0 && a.pp > 1 && !(a.model.empty() && a.load.empty()))
    num_layers = model::load_hf_config(a.load.empty() ? a.model : a.load).num_layers;
  const auto layout = parallel_layout(a, world ? world->size() : 1, num_layers);
  const auto groups = world ? std::make_shared<const moe::dist::ProcessGroups>(layout, *world)
                            : std::make_shared<const moe::dist::ProcessGroups>(moe::dist::ProcessGroups::local());
  const bool writer = !world || world->rank() == 0;
  if (a.t.global_batch_size % (a.t.micro_batch_size * layout.dp) != 0)
    moe::throw_input(
        "--global_batch_size {} must be a multiple of --micro_batch_size {} x the data-parallel size {} ({} ranks / "
        "(TP x PP x CP))",
        a.t.global_batch_size, a.t.micro_batch_size, layout.dp, layout.world());
  if (const int m = a.t.global_batch_size / (a.t.micro_batch_size * layout.dp); layout.vpp > 1 && m % layout.pp != 0)
    moe::throw_input(
        "--virtual_pipeline_model_parallel_size {}: the interleaved schedule needs the {} micro-batches of a global "
        "batch per pipeline (--global_batch_size {} / (--micro_batch_size {} x data-parallel {})) to be a multiple of "
        "--pipeline_model_parallel_size {}",
        layout.vpp, m, a.t.global_batch_size, a.t.micro_batch_size, layout.dp, layout.pp);
  if (a.model.empty() && a.load.empty())
    moe::throw_input("pass --model HF_DIR (or a dir with only config.json + tokenizer) or --load MCORE_DIR");
  const std::string src = a.load.empty() ? a.model : a.load;
  check_source(a.load.empty() ? "--model" : "--load", src);
  const bool has_weights =
      fs::exists(fs::path(src) / "latest_checkpointed_iteration.txt") ||
      fs::exists(fs::path(src) / "model.safetensors") || fs::exists(fs::path(src) / "model.safetensors.index.json") ||
      fs::exists(fs::path(src) / "pytorch_model.bin") || fs::exists(fs::path(src) / "pytorch_model.bin.index.json");
  if (!a.load.empty() && !has_weights && a.exit_on_missing_checkpoint)
    moe::throw_input(
        "--load {}: no checkpoint there (no latest_checkpointed_iteration.txt or safetensors); to train "
        "from random init pass the config dir as --model (or --exit_on_missing_checkpoint false, as Megatron)",
        a.load);
  // Megatron with --exit_on_missing_checkpoint false: nothing to load means iteration 0, random weights.
  const bool resuming = !a.load.empty() && !a.finetune && has_weights;
  // Weights: a Megatron or HF checkpoint, or random init when the dir has only config + tokenizer.
  checkpoint::LoadedModel lm;
  // Where the run writes is checked before any work; the dir itself is made once all input is read.
  const std::string save_root = a.save.empty() ? "megatron_output/" + fs::path(src).filename().string() : a.save;
  moe::train::RunDirOptions rdo;
  rdo.add_version = a.add_version, rdo.resuming = resuming, rdo.overwrite = a.overwrite_output_dir;
  // Megatron resumes with --load and --save naming one dir; otherwise no input is written into.
  const bool same_dir = !a.load.empty() && !a.add_version && moe::normal_path(a.load) == moe::normal_path(save_root);
  if (!same_dir) rdo.inputs = {src};
  moe::train::RunDir::check(save_root, rdo);
  // Resident memory before the weights exist (binary, MPI, communicators): what the per-rank memory
  // report counts from.
  const double rss_at_start_gib = moe::train::current_rss_gib();
  if (has_weights) {
    lm = checkpoint::load_model(src);
  } else {
    lm.config = model::load_hf_config(src);
    lm.state = model::init_random_state(lm.config, a.t.seed, moe::DType::F32, a.init_method_std);
    if (!a.load.empty())
      moe::log().warn(
          "--load {} holds no checkpoint: starting from random weights (--exit_on_missing_checkpoint false)", a.load);
    moe::log().info("{} has no weights: initialised randomly (std {}, seed {})", src, a.init_method_std, a.t.seed);
  }
  auto tok = moe::text::Tokenizer::load(src);
  const std::string tname = a.tem.empty() ? moe::text::default_template_for(lm.config.model_type, tok.get()) : a.tem;
  // --system replaces the template's default (--system '' leaves conversations without one).
  auto tmpl = a.system_given ? moe::text::make_template(tname, a.system) : moe::text::make_template(tname);
  moe::train::DatasetOptions d;
  d.specs = a.dataset, d.val_specs = a.val_dataset, d.split_dataset_ratio = a.split_dataset_ratio;
  d.system_given = a.system_given, d.system = a.system, d.model_name = a.model_name, d.model_author = a.model_author;
  d.max_length = a.max_length, d.truncation_strategy = a.truncation_strategy, d.seed = a.t.seed;
  d.num_proc = std::max(a.dataset_num_proc, 1);
  d.pretrain = a.pretrain, d.streaming = a.streaming;
  const auto data = moe::train::load_datasets(d, *tok, *tmpl);
  if (data.stream)
    moe::log().info("dataset: streamed (rows read and tokenised as training takes them), {} validation sequences",
                    data.val.size());
  else
    moe::log().info("dataset: {} training and {} validation sequences from {} rows", data.train.size(), data.val.size(),
                    data.rows_read);

  moe::train::TrainerConfig t = a.t;
  t.max_length = a.max_length, t.packing = a.packing;
  // Everything that can be refused is checked before the run dir exists.
  const nlohmann::json architecture =
      check_architecture_flags(cli, a.architecture, lm.config, (fs::path(src) / "config.json").string());
  moe::model::validate_train_options(a.m, lm.config);
  if (layout.ep > 1 && lm.config.num_experts == 0)
    moe::throw_input("--expert_model_parallel_size {}: {} has no experts to spread", layout.ep, src);
  const model::ShardSpec check_shards(lm.config, layout, 1);  // the experts divide over EP
  const moe::train::LrSchedule check_schedule(
      t.lr, t.train_iters > 0 ? t.train_iters : int64_t(1) << 40);  // epochs: length not known yet
  moe::train::Optimizer check_optimizer(t.optim);
  if (resuming && !fs::exists(fs::path(a.load) / "latest_checkpointed_iteration.txt"))
    moe::throw_input("--finetune false resumes a Megatron checkpoint, but {} has no latest_checkpointed_iteration.txt",
                     a.load);
  t.ckpt.format = moe::checkpoint::parse_ckpt_format("--ckpt_format", a.ckpt_format);
  if (layout.vpp > 1 && t.ckpt.format == moe::checkpoint::CkptFormat::kTorch)
    moe::throw_input(
        "--ckpt_format torch with --virtual_pipeline_model_parallel_size {}: Megatron's per-chunk model0/model1 "
        "rank files are not written yet; save with --ckpt_format torch_dist (the default)",
        layout.vpp);
  if (a.thread_count < 1 || a.thread_count > 64)
    moe::throw_input("--thread_count {}: expected 1 to 64 files per saving rank", a.thread_count);
  t.ckpt.thread_count = a.thread_count;
  // The writer makes the run dir; the other ranks learn its name (they write nothing into it).
  std::optional<moe::train::RunDir> run_dir;
  if (writer) run_dir.emplace(save_root, rdo);
  t.out_dir = run_dir ? run_dir->path() : "";
  if (world) t.out_dir = moe::dist::broadcast_string(*world, t.out_dir, 0);
  t.groups = groups, t.writer = writer, t.distributed_optimizer = a.use_distributed_optimizer;
  t.tensorboard_dir = a.tensorboard_dir.empty() ? (fs::path(t.out_dir) / "runs").string() : a.tensorboard_dir;
  t.overlap.grad_reduce = a.overlap_grad_reduce, t.overlap.param_gather = a.overlap_param_gather;
  // Megatron's DDP bucket size (one bucket without overlap: only its size matters here).
  t.overlap.bucket_elems =
      size_t(a.ddp_bucket_size > 0 ? a.ddp_bucket_size : std::max<int64_t>(40000000, 1000000LL * layout.dp));
  if (world && a.overlap_param_gather && !a.use_distributed_optimizer)
    moe::log().warn(
        "--overlap_param_gather: only the distributed optimizer gathers parameters (--use_distributed_optimizer "
        "true); nothing to overlap");
  t.ckpt.dtype = dtype_from(a.torch_dtype, lm.config.params_dtype);
  t.ckpt.save_optim = !a.no_save_optim, t.ckpt.save_rng = !a.no_save_rng, t.ckpt.save_safetensors = a.save_safetensors;
  t.ckpt.distributed_optimizer = a.use_distributed_optimizer;  // torch format: distrib_optim.pt
  t.ckpt.source_dir = src;
  t.load_optim = !a.no_load_optim, t.load_rng = !a.no_load_rng;
  if (resuming) t.resume_dir = a.load;
  nlohmann::json args = {{"command", a.pretrain ? "pt" : "sft"},
                         {"model", a.model},
                         {"load", a.load},
                         {"model_type", lm.config.model_type},
                         {"dataset", a.dataset},
                         {"template", tmpl->name()},
                         {"train_iters", t.train_iters},
                         {"max_epochs", t.max_epochs},
                         {"micro_batch_size", t.micro_batch_size},
                         {"global_batch_size", t.global_batch_size},
                         {"lr", t.lr.lr},
                         {"min_lr", t.lr.min_lr},
                         {"lr_decay_style", t.lr.style},
                         {"max_length", a.max_length},
                         {"dataset_num_proc", a.dataset_num_proc},
                         {"packing", a.packing},
                         {"streaming", a.streaming},
                         {"calculate_per_token_loss", t.calculate_per_token_loss},
                         {"moe_router_load_balancing_type", a.m.moe.load_balancing_type},
                         {"moe_aux_loss_coeff", a.m.moe.aux_loss_coeff},
                         {"seed", t.seed},
                         {"torch_dtype", moe::torch_dtype_name(t.ckpt.dtype)},
                         {"world_size", layout.world()},
                         {"data_parallel_size", layout.dp},
                         {"tensor_model_parallel_size", layout.tp},
                         {"pipeline_model_parallel_size", layout.pp},
                         {"virtual_pipeline_model_parallel_size", layout.vpp},
                         {"decoder_first_pipeline_num_layers", layout.first_stage_layers},
                         {"decoder_last_pipeline_num_layers", layout.last_stage_layers},
                         {"expert_model_parallel_size", layout.ep},
                         {"expert_tensor_parallel_size", layout.etp},
                         {"context_parallel_size", layout.cp},
                         {"sequence_parallel", a.sequence_parallel && layout.tp > 1},
                         {"use_distributed_optimizer", a.use_distributed_optimizer},
                         {"make_vocab_size_divisible_by", 128},
                         {"train_type", "full"}};
  args.update(given_knobs(cli, a.knobs));
  args.update(architecture);
  args["tensorboard_dir"] = t.tensorboard_dir;
  args["tensorboard_log_interval"] = t.tensorboard.log_interval;
  args["log_timers_to_tensorboard"] = t.tensorboard.timers;
  args["log_memory_to_tensorboard"] = t.tensorboard.memory;
  args["log_validation_ppl_to_tensorboard"] = t.tensorboard.validation_ppl;
  args["no_log_learning_rate_to_tensorboard"] = !t.tensorboard.learning_rate;
  args["log_throughput"] = t.tensorboard.throughput;
  args["log_params_norm"] = t.tensorboard.params_norm;
  args["exit_on_missing_checkpoint"] = a.exit_on_missing_checkpoint;
  args["seq_length"] = a.seq_length > 0 ? a.seq_length : a.max_length;
  if (writer) moe::write_file_atomic((fs::path(t.out_dir) / "args.json").string(), args.dump(2) + "\n");
  moe::log().info("output_dir: {}", t.out_dir);
  if (layout.dp > 1) moe::log().info("{} processes: data parallel {} ({})", layout.world(), layout.dp, launch.launcher);
  moe::model::TrainOptions options = a.m;
  options.sequence_parallel = a.sequence_parallel && layout.tp > 1;  // Megatron ignores it with TP 1
  model::TrainModel tm(lm.config, lm.state, options, world ? groups : nullptr);
  lm.state.clear();          // the trainer holds its own fp32 copy
  moe::keep_freed_memory();  // the step's buffers come back from the heap, not from new pages
  // On a terminal: a progress bar with the log lines printed above it (other info messages,
  // which would break the bar's line, are held back); elsewhere plain log lines.
  std::unique_ptr<moe::train::ProgressBar> bar;
  const auto level = moe::log().level();
  if (writer && isatty(fileno(stderr))) {
    t.on_iteration = [&bar, level](const moe::train::IterationReport& r) {
      if (!bar) {
        bar = std::make_unique<moe::train::ProgressBar>("Train", r.total);
        if (level >= spdlog::level::info) moe::set_log_level(spdlog::level::warn);
      }
      bar->clear();
      for (const auto& l : r.lines) std::fprintf(stderr, "%s\n", l.dump().c_str());
      bar->update(r.iteration, r.elapsed_s, fmt::format("loss={:.4g}, lr={:.3g}", r.loss, r.lr));
    };
  }
  const auto r = moe::train::run_training(t, tm, data);
  if (bar) bar->finish(), moe::set_log_level(level);
  if (writer)
    std::printf("trained %lld iterations (%lld skipped), last loss %.6f; checkpoint: %s\n",
                static_cast<long long>(r.iterations), static_cast<long long>(r.skipped), r.last_loss,
                r.last_checkpoint.c_str());
  if (r.train_peak_rss_gib > 0) {
    // Every rank's memory, as Megatron's report_memory prints it per rank (resident memory here:
    // the CPU engine's allocator is the process's); `moectl plan --moectl_cpu_layout` predicts the
    // difference of the two.
    std::printf("[Rank %d] (after %lld iterations) memory (MiB) | at start: %.1f | max rss: %.1f\n",
                world ? world->rank() : 0, static_cast<long long>(r.iterations), rss_at_start_gib * 1024,
                r.train_peak_rss_gib * 1024);
    std::fflush(stdout);
  }
  if (world) {  // where the job's communication time went (rank 0's view)
    const auto ct = moe::dist::collective_times();
    std::string parts;
    for (int k = 0; k < moe::dist::kCollectiveKinds; ++k)
      if (ct.calls[size_t(k)] > 0)
        parts += fmt::format("{}{} {:.3f} s ({} calls, {:.1f} MB)", parts.empty() ? "" : ", ",
                             moe::dist::collective_kind_name(moe::dist::CollectiveKind(k)), ct.seconds[size_t(k)],
                             ct.calls[size_t(k)], double(ct.bytes[size_t(k)]) / 1e6);
    if (writer) std::printf("communication: %.3f s in collectives: %s\n", ct.total_seconds(), parts.c_str());
    if (writer && r.buckets > 0)  // the reduce / all_reduce times above are then the waits left over
      std::printf("overlap: %d of %d gradient buckets started reducing during the backward\n", r.buckets_overlapped,
                  r.buckets);
  }
  if (writer && r.pipeline_stages > 1 && r.pipeline_total_s > 0) {  // stage 0's idle share vs 1F1B's
    const int p = r.pipeline_stages, m = r.pipeline_micro_batches;
    const int v = r.pipeline_chunks;  // interleaved: (p - 1) / (v m + p - 1)
    // The formulas assume equal stages. With stage s computing c_s per micro-batch the slowest sets
    // the steady pace: stage 0 waits for ((m v - 1) max c + sum c) / v and computes m c_0.
    const auto& c = r.pipeline_stage_compute_s;
    const double cmax = *std::max_element(c.begin(), c.end()), csum = std::accumulate(c.begin(), c.end(), 0.0);
    const double uneven = 1.0 - double(m) * v * c[0] / ((double(m) * v - 1) * cmax + csum);
    std::string stages;
    for (double s : c) stages += fmt::format("{}{:.2f}", stages.empty() ? "" : " / ", s);
    std::printf(
        "pipeline bubble: %.3f of stage %d's schedule time (%d stages, %d micro-batches, %d virtual; %s formula %.3f; "
        "%.3f for the stages' measured compute %s s)\n",
        1.0 - r.pipeline_compute_s / r.pipeline_total_s, r.pipeline_stage, p, m, v, v > 1 ? "interleaved 1F1B" : "1F1B",
        double(p - 1) / double(v * m + p - 1), uneven, stages.c_str());
  }
}

void add_command(CLI::App& root, bool pretrain) {
  auto a = std::make_shared<TrainArgs>();
  a->pretrain = pretrain;
  auto* c = root.add_subcommand(
      pretrain ? "pt" : "sft",
      pretrain ? "Pre-train (loss on every token); one process or mpirun/NPROC_PER_NODE"
               : "Supervised fine-tuning (loss on assistant turns); one process or mpirun/NPROC_PER_NODE");
  auto& t = a->t;
  auto& m = a->m;
  c->add_option("--model", a->model, "HF model dir, or a dir with only config.json + tokenizer (random init)");
  c->add_option("--load,--mcore_model", a->load, "Megatron checkpoint dir (from moectl export or a previous run)");
  c->add_option("--finetune", a->finetune, "true: weights only from --load, iteration 0; false: resume exactly");
  c->add_option("--init_method_std", a->init_method_std, "Std of the random init without weights");
  c->add_option("--dataset", a->dataset, "Local .jsonl/.json files, PATH#N, self-cognition[#N], dummy#N")->required();
  c->add_option("--val_dataset", a->val_dataset, "Validation datasets");
  c->add_option("--split_dataset_ratio", a->split_dataset_ratio, "Fraction of --dataset held out for evaluation");
  c->add_option("--system", a->system, "System prompt (overrides the template's default; '' for none)")
      ->each([a](const std::string&) { a->system_given = true; });
  c->add_option("--template", a->tem, "Chat template (default: the model type's)");
  c->add_option("--model_name", a->model_name, "self-cognition: the model's name (Chinese then English, or one)");
  c->add_option("--model_author", a->model_author, "self-cognition: the author (Chinese then English, or one)");
  c->add_option("--max_length", a->max_length, "Longest sequence in tokens");
  c->add_option("--truncation_strategy", a->truncation_strategy, "delete | left | right");
  c->add_option("--packing", a->packing, "Pack samples into rows of --max_length (attention stays per sample)");
  c->add_option("--streaming", a->streaming,
                "Read --dataset lazily, in order (no shuffle), each row tokenised when training takes it; needs "
                "--train_iters; at the end it starts again");
  c->add_option("--calculate_per_token_loss", t.calculate_per_token_loss,
                "true: the loss over the global batch's label tokens (swift's default); false: each micro-batch's "
                "mean, averaged over the micro-batches (the log shows the token mean either way, as Megatron)");
  c->add_option("--train_iters", t.train_iters, "Optimizer steps (default: from --max_epochs)");
  c->add_option("--max_epochs,--num_train_epochs", t.max_epochs, "Epochs when --train_iters is not given");
  c->add_option("--micro_batch_size", t.micro_batch_size, "Rows per micro-batch");
  c->add_option("--global_batch_size", t.global_batch_size, "Rows per optimizer step (micro x accumulation)");
  c->add_option("--lr", t.lr.lr, "Peak learning rate");
  c->add_option("--min_lr", t.lr.min_lr, "Final learning rate");
  c->add_option("--lr_warmup_iters", t.lr.warmup_iters, "Linear warmup steps");
  c->add_option("--lr_warmup_fraction", t.lr.warmup_fraction, "Warmup as a fraction of the decay steps");
  c->add_option("--lr_decay_iters", t.lr.decay_iters, "Decay steps (default: train_iters)");
  c->add_option("--lr_decay_style", t.lr.style, "cosine | linear | constant | inverse-square-root");
  c->add_option("--optimizer", t.optim.type, "adam | sgd");
  c->add_option("--weight_decay", t.optim.weight_decay, "Decoupled weight decay (not on norms and biases)");
  c->add_option("--adam_beta1", t.optim.beta1, "Adam beta1");
  c->add_option("--adam_beta2", t.optim.beta2, "Adam beta2");
  c->add_option("--adam_eps", t.optim.eps, "Adam epsilon");
  c->add_option("--sgd_momentum", t.optim.sgd_momentum, "SGD momentum");
  c->add_option("--clip_grad", t.clip_grad, "Clip gradients to this global L2 norm (0: off)");
  c->add_option("--save,--output_dir", a->save, "Output root (a vN-YYYYMMDD-HHMMSS run dir is made inside)");
  c->add_option("--save_interval,--save_steps", t.save_interval, "Checkpoint every N steps (and at the end)");
  c->add_option("--eval_interval,--eval_steps", t.eval_interval, "Evaluate every N steps (and at the end)");
  c->add_option("--eval_iters", t.eval_iters, "Global batches per evaluation (-1: the whole validation set)");
  c->add_option("--log_interval,--logging_steps", t.log_interval, "Log every N steps");
  c->add_option("--ckpt_format", a->ckpt_format,
                "Checkpoint format: torch_dist (default, as Megatron-LM and swift) or torch (mp_rank_* files)");
  c->add_option("--thread_count", a->thread_count, "torch_dist: .distcp files each saving rank writes at once");
  c->add_option("--no_save_optim", a->no_save_optim, "Leave the optimizer state out of checkpoints");
  c->add_option("--no_save_rng", a->no_save_rng, "Leave the data position out of checkpoints");
  c->add_option("--no_load_optim", a->no_load_optim, "Resume without the saved optimizer state");
  c->add_option("--no_load_rng", a->no_load_rng, "Resume without the saved data position");
  c->add_option("--add_version", a->add_version, "Make a vN-YYYYMMDD-HHMMSS dir under --save");
  c->add_option("--overwrite_output_dir", a->overwrite_output_dir,
                "With --add_version false: replace the checkpoints and logs of an earlier run in --save");
  c->add_option("--save_safetensors", a->save_safetensors, "Also write HF safetensors (checkpoint-N/) for infer");
  c->add_option("--torch_dtype", a->torch_dtype, "Saved weights: bfloat16 | float16 | float32 (default: the model's)");
  c->add_option("--seed", a->seed, "Seed for data order, sampling and init");
  c->add_option("--recompute_granularity", a->recompute_granularity, "none | selective | full");
  c->add_option("--recompute_method", m.recompute.method, "full: uniform | block");
  c->add_option("--recompute_num_layers", m.recompute.num_layers,
                "full: layers per chunk (uniform) or recomputed (block)");
  c->add_option("--recompute_modules", m.recompute.modules, "selective: core_attn moe_act layernorm mlp moe");
  c->add_option("--moe_aux_loss_coeff", a->aux_loss_coeffs,
                "Load-balancing loss coefficient: one per --moe_router_load_balancing_type (Megatron-Core's list)");
  c->add_option("--moe_router_load_balancing_type", a->balancing_types,
                "aux_loss | seq_aux_loss | none (a list of one: one type at a time)");
  c->add_option("--moe_z_loss_coeff", m.moe.z_loss_coeff, "Router z-loss coefficient");
  c->add_option("--moe_expert_capacity_factor", m.moe.capacity_factor,
                "Drop tokens over this capacity (default: dropless)");
  c->add_option("--moe_pad_expert_input_to_capacity", m.moe.pad_expert_input_to_capacity, "Pad experts to capacity");
  c->add_option("--moe_token_drop_policy", m.moe.token_drop_policy, "probs | position");
  c->add_option("--moe_router_enable_expert_bias", m.moe.enable_expert_bias, "Aux-loss-free balancing bias");
  c->add_option("--moe_router_bias_update_rate", m.moe.bias_update_rate, "Expert bias step");
  c->add_option("--tensor_model_parallel_size", a->tp,
                "Tensor parallel size (heads, query groups and MLP widths split)");
  c->add_option("--sequence_parallel", a->sequence_parallel,
                "Sequence parallelism with TP > 1: norms and residuals on 1/TP of the tokens (true|false; needed with "
                "expert parallelism)");
  c->add_option("--pipeline_model_parallel_size", a->pp, "Pipeline parallel size (stages of layers, 1F1B schedule)");
  c->add_option("--decoder_first_pipeline_num_layers", a->first_stage_layers,
                "Layers of the first pipeline stage (default: an even split)");
  c->add_option("--decoder_last_pipeline_num_layers", a->last_stage_layers,
                "Layers of the last pipeline stage (default: an even split)");
  c->add_option("--virtual_pipeline_model_parallel_size", a->vpp,
                "Model chunks per pipeline rank: interleaved 1F1B with > 1");
  c->add_option("--num_layers_per_virtual_pipeline_stage", a->layers_per_virtual_stage,
                "Layers per virtual pipeline chunk (sets --virtual_pipeline_model_parallel_size)");
  c->add_option("--expert_model_parallel_size", a->ep, "Expert parallel size (experts spread over this many ranks)");
  c->add_option("--moe_token_dispatcher_type", m.moe.token_dispatcher,
                "alltoall | allgather: how tokens reach EP ranks");
  c->add_option("--expert_tensor_parallel_size", a->etp,
                "Expert tensor parallel size: as TP (the default) or 1 (MoE parallel folding: whole experts, each TP "
                "rank routing its own rows; needs --sequence_parallel true)");
  c->add_option("--context_parallel_size", a->cp,
                "Context parallel size: every sequence's tokens split over this many ranks (Megatron's load-balanced "
                "causal split; attention gathers the keys and values)");
  c->add_option("--distributed_timeout_minutes", a->distributed_timeout_minutes,
                "End the job when a collective waits longer than this (a rank died or hung)");
  c->add_option("--tensorboard_dir", a->tensorboard_dir, "TensorBoard event files (default: <run dir>/runs)");
  c->add_option("--tensorboard_log_interval", a->t.tensorboard.log_interval,
                "Iterations between Megatron's TensorBoard scalars (lm loss, learning-rate, grad-norm, ...)");
  c->add_option("--log_timers_to_tensorboard", a->t.tensorboard.timers, "TensorBoard: iteration-time (true|false)");
  c->add_option("--log_memory_to_tensorboard", a->t.tensorboard.memory,
                "TensorBoard: mem-max-allocated-bytes, the process's peak RSS (true|false)");
  c->add_option("--log_validation_ppl_to_tensorboard", a->t.tensorboard.validation_ppl,
                "TensorBoard: lm loss validation ppl (true|false)");
  c->add_option("--no_log_learning_rate_to_tensorboard", a->no_log_learning_rate_to_tensorboard,
                "TensorBoard: leave learning-rate out (true|false)");
  c->add_option("--log_throughput", a->t.tensorboard.throughput,
                "TensorBoard: throughput, TFLOP/s per process (true|false; the log always has tokens/s)");
  c->add_option("--exit_on_missing_checkpoint", a->exit_on_missing_checkpoint,
                "With --load holding no checkpoint: exit (true, the default) or start from random weights with its "
                "config.json (false, Megatron's)");
  c->add_option("--log_params_norm", a->t.tensorboard.params_norm,
                "The parameters' L2 norm after each update: params_norm in the log, params-norm in TensorBoard "
                "(true|false)");
  c->add_option("--dataset_num_proc", a->dataset_num_proc,
                "Threads that tokenise the dataset (swift's processes; the same samples for any count)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--seq_length", a->seq_length, "Megatron's sequence length (default and minimum: --max_length)");
  // Overlap of communication with computation (the results are the same either way).
  c->add_option("--overlap_grad_reduce", a->overlap_grad_reduce,
                "Start each bucket's DP gradient reduction as the backward finishes it (true|false)");
  c->add_option("--ddp_bucket_size", a->ddp_bucket_size,
                "Elements per gradient bucket with --overlap_grad_reduce (default: max(40M, 1M x DP), as Megatron)")
      ->check(CLI::PositiveNumber);
  c->add_option("--overlap_param_gather", a->overlap_param_gather,
                "Gather the updated parameters during the next forward, each bucket before its first use (true|false)");
  add_megatron_knobs(c, a->knobs);
  add_architecture_flags(c, a->architecture);
  c->add_option("--use_distributed_optimizer", a->use_distributed_optimizer,
                "Shard the optimizer state over the data-parallel ranks (Megatron-SWIFT's default)");
  c->callback([a, c] {
    a->t.seed = uint64_t(a->seed);
    // A --seq_length alone is the sample limit (swift sets each from the other).
    if (c->count("--seq_length") && !c->count("--max_length")) a->max_length = a->seq_length;
    a->t.tensorboard.learning_rate = !a->no_log_learning_rate_to_tensorboard;
    set_load_balancing(*a);
    moe::model::parse_recompute(a->recompute_granularity, &a->m.recompute.granularity);  // checked in run()
    run(*a, *c);
  });
}

}  // namespace

void add_pt_command(CLI::App& root) { add_command(root, true); }
void add_sft_command(CLI::App& root) { add_command(root, false); }

}  // namespace moectl
