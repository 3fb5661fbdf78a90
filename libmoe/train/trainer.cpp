#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <tuple>

#include "core/error.h"
#include "core/log.h"
#include "core/mapped_file.h"
#include "model/context_parallel.h"
#include "model/rank_state.h"
#include "train/data_loader.h"
#include "train/metrics.h"
#include "train/pipeline_schedule.h"
#include "train/svg_plot.h"
#include "train/tensorboard.h"

namespace moe::train {

namespace fs = std::filesystem;

int64_t iterations_for_epochs(int64_t rows, int mbs, int gbs, int epochs, int dp) {
  const int64_t slab = int64_t(mbs) * dp;
  return (rows / slab) * slab * epochs / gbs;
}

namespace {

model::MicroBatchView view(const MicroBatch& mb) { return {mb.tokens, mb.labels, mb.position_ids, mb.cu_seqlens}; }

// Over every rank of a job (the DP x CP groups, then the TP groups, then the pipelines, which
// together span the world): root 0's string on every rank, and a barrier.
std::string job_broadcast(const dist::ProcessGroups& g, std::string s) {
  s = dist::broadcast_string(g.dp_cp(), std::move(s), 0);  // world rank 0 to its DP x CP group (TP rank 0)
  s = dist::broadcast_string(g.tp(), std::move(s), 0);     // to the first stage
  return dist::broadcast_string(g.pp(), std::move(s), 0);
}
void job_barrier(const dist::ProcessGroups& g) {
  g.dp_cp().barrier();
  g.tp().barrier();  // TP rank 0's DP x CP group has passed, so every one of the stage has
  g.pp().barrier();  // and every stage's
}

// A job's checkpoint in Megatron's per-rank layout: world rank 0 opens the iteration's staging
// dir. Legacy format: each (TP, EP) rank's expert-DP rank 0 writes mp_rank_TT[_EEE] (its dense
// slices and experts, with their optimizer state). torch_dist: each EP rank writes its chunks;
// under TP the TP slices are gathered first and world rank 0 writes the global tensors whole. The
// HF copy is gathered whole; after a barrier rank 0 publishes the dir, the copy and, last, the
// tracker. Every rank calls it (collectives).
void save_job_checkpoint(const TrainerConfig& cfg, model::TrainModel& model, ParallelOptimizer& opt,
                         const Optimizer& no_state, const LrScheduleConfig& lrc, const TrainProgress& prog) {
  const dist::ProcessGroups& g = *cfg.groups;
  const auto& layout = g.layout();
  std::optional<CheckpointSave> save;
  std::string staging;
  if (cfg.writer) save.emplace(cfg.out_dir, prog.iteration), staging = save->staging().string();
  staging = job_broadcast(g, staging);
  const bool dist_format = cfg.ckpt.format == checkpoint::CkptFormat::kTorchDist;
  if (dist_format && (layout.tp > 1 || layout.pp > 1)) {
    const auto whole = opt.whole_state(cfg.ckpt.save_optim);  // a collective over the job
    if (cfg.writer)
      write_dist_rank(staging, 0, 0, 1, model.config(), layout, whole.params, model.buffers(),
                      whole.optimizer ? *whole.optimizer : no_state, lrc, prog, cfg.ckpt);
  } else {
    const Optimizer* state = cfg.ckpt.save_optim ? &opt.gather_rank_state() : nullptr;
    if (opt.writes_rank_file()) {
      if (dist_format) {  // every writing rank its own chunks
        write_dist_rank(staging, g.dp_cp().rank(), opt.ep_rank(), layout.ep, model.config(), layout, model.params(),
                        model.buffers(), state ? *state : no_state, lrc, prog, cfg.ckpt);
      } else {
        // Megatron's per-stage file: mp_rank_TT_PPP[_EEE], layers numbered from 0 within the stage.
        const std::string rank_dir = model::ShardSpec(model.config(), layout, model::kMakeVocabSizeDivisibleBy)
                                         .rank_dir(g.tp().rank(), g.pp().rank(), opt.ep_rank());
        write_rank_file(std::filesystem::path(staging) / rank_dir, model.config(), layout, model.params(),
                        model.buffers(), state ? *state : no_state, lrc, prog, cfg.ckpt, model.layer_begin());
      }
    }
    if (state) opt.release_rank_state();
  }
  ParallelOptimizer::Whole whole;
  if (cfg.ckpt.save_safetensors) whole = opt.whole_state(false);
  job_barrier(g);  // every rank file is complete
  if (save)
    save->finish(model.config(), cfg.ckpt.save_safetensors ? &whole.params : nullptr, model.buffers(), cfg.ckpt);
}

// The data-parallel group: this rank's share of every batch, and the sums over the ranks.
struct DataParallel {
  dist::Communicator* group = nullptr;  // null: one process
  // Context parallelism: the DP x CP group, over which the ranks' token statistics (each CP rank's
  // tokens' losses and counts) add up; null without CP.
  dist::Communicator* with_cp = nullptr;
  int size = 1, rank = 0;
  explicit DataParallel(const dist::ProcessGroups* g) {
    if (g && g->dp().size() > 1) group = &g->dp(), size = group->size(), rank = group->rank();
    if (g && g->cp().size() > 1) with_cp = &g->dp_cp();
  }
  bool mine(size_t micro_batch) const { return int(micro_batch % size_t(size)) == rank; }
  // Every rank ends with the step's statistics summed over the group. The expert loads are each
  // micro-batch's already (a CP group's routers sum theirs), so they add up over DP only.
  void sum(model::StepStats& st) const {
    dist::Communicator* tokens = with_cp ? with_cp : group;
    if (!tokens) return;
    double f[3] = {st.lm_loss_sum, st.aux_loss, st.z_loss};
    tokens->all_reduce(f, 3, dist::DataType::kF64, dist::ReduceOp::kSum);
    st.lm_loss_sum = f[0], st.aux_loss = f[1], st.z_loss = f[2];
    std::vector<int64_t> n = {st.loss_tokens, st.correct};
    if (!with_cp) n.insert(n.end(), st.tokens_per_expert.begin(), st.tokens_per_expert.end());
    tokens->all_reduce(n.data(), int64_t(n.size()), dist::DataType::kI64, dist::ReduceOp::kSum);
    st.loss_tokens = n[0], st.correct = n[1];
    if (!with_cp) std::copy(n.begin() + 2, n.end(), st.tokens_per_expert.begin());
    else if (group)
      group->all_reduce(st.tokens_per_expert.data(), int64_t(st.tokens_per_expert.size()), dist::DataType::kI64,
                        dist::ReduceOp::kSum);
  }
};

// Context parallelism: every rank of a CP group runs the same micro-batches, each its rows of
// every sequence (model/context_parallel.h), cut here from the whole micro-batch the loader gives.
struct ContextParallel {
  int size = 1, rank = 0;
  std::vector<int64_t> rows;  // reused from micro-batch to micro-batch
  explicit ContextParallel(const dist::ProcessGroups* g) {
    if (g) size = g->cp().size(), rank = g->cp().rank();
  }
  // The model's view of `mb` on this rank; `local` holds the rank's rows (untouched without CP).
  model::MicroBatchView view(const MicroBatch& mb, MicroBatch& local) {
    if (size == 1) return train::view(mb);
    rows.resize(mb.tokens.size());
    local.cu_seqlens.resize(mb.cu_seqlens.size());
    const size_t n = size_t(model::cp_local_rows(mb.cu_seqlens, size, rank, rows.data(), local.cu_seqlens.data()));
    local.tokens.resize(n), local.labels.resize(n), local.position_ids.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const size_t r = size_t(rows[i]);
      local.tokens[i] = mb.tokens[r], local.labels[i] = mb.labels[r], local.position_ids[i] = mb.position_ids[r];
    }
    local.rows = mb.rows;
    model::MicroBatchView v = train::view(local);
    v.whole_cu_seqlens = mb.cu_seqlens;
    return v;
  }
};

// The pipeline: every stage runs the same micro-batches; the last computes the loss, each its own
// layers' MoE numbers. Summed over the stages, every rank (the writer on the first stage too)
// holds the step's statistics, and decides the skip the same way.
struct Pipeline {
  dist::Communicator* group = nullptr;  // null: no pipeline parallelism
  PipelineTimes times;
  explicit Pipeline(const dist::ProcessGroups* g) {
    if (g && g->pp().size() > 1) group = &g->pp();
  }
  void sum(model::StepStats& st) const {
    if (!group) return;
    DataParallel over{nullptr};
    over.group = group;
    over.sum(st);
  }
};

// Per MoE layer, its expert load imbalance: the busiest expert's tokens over the mean tokens per
// expert (1 is perfectly even, the expert count all on one), from [layers x experts] counts.
// Dense layers are left out; a layer that routed nothing is 0.
std::vector<std::pair<int, double>> expert_load_imbalance(const model::ModelConfig& mc,
                                                          const std::vector<int64_t>& tokens_per_expert) {
  std::vector<std::pair<int, double>> out;
  const auto E = size_t(std::max(mc.num_experts, 0));
  if (E == 0 || tokens_per_expert.size() < size_t(mc.num_layers) * E) return out;
  for (int l = 0; l < mc.num_layers; ++l) {
    if (!mc.is_moe_layer(l)) continue;
    const auto* t = tokens_per_expert.data() + size_t(l) * E;
    int64_t total = 0, most = 0;
    for (size_t e = 0; e < E; ++e) total += t[e], most = std::max(most, t[e]);
    out.emplace_back(l, total > 0 ? double(most) * double(E) / double(total) : 0.0);
  }
  return out;
}

}  // namespace

TrainResult run_training(const TrainerConfig& cfg, model::TrainModel& model, const Datasets& data) {
  const auto& mc = model.config();
  const DataParallel dp(cfg.groups.get());
  ContextParallel cp(cfg.groups.get());
  Pipeline pipe(cfg.groups.get());
  if (cfg.global_batch_size % (cfg.micro_batch_size * dp.size) != 0)
    throw_input(
        "--global_batch_size {} must be a multiple of --micro_batch_size {} x the data-parallel size {} (world size / "
        "(TP x PP x CP))",
        cfg.global_batch_size, cfg.micro_batch_size, dp.size);
  // Micro-batches per global batch, over all DP ranks; this rank runs every dp.size-th.
  const int accum = cfg.global_batch_size / cfg.micro_batch_size;
  DataLoader loader = data.stream ? DataLoader(*data.stream, cfg.micro_batch_size, cfg.seed)
                                  : DataLoader(data.train, cfg.micro_batch_size, cfg.packing, cfg.max_length, cfg.seed);
  int64_t train_iters = cfg.train_iters;
  if (train_iters <= 0 && data.stream)
    throw_input("--streaming true needs --train_iters: a stream's length is not known before it is read");
  if (train_iters <= 0) {
    train_iters = iterations_for_epochs(loader.rows_per_epoch(), cfg.micro_batch_size, cfg.global_batch_size,
                                        cfg.max_epochs, dp.size);
    if (train_iters <= 0)
      throw_input(
          "{} training rows make no global batch of {} over {} epoch(s); lower --global_batch_size or set "
          "--train_iters",
          loader.rows_per_epoch(), cfg.global_batch_size, cfg.max_epochs);
  }
  LrScheduleConfig lrc = cfg.lr;
  LrSchedule sched(lrc, train_iters);
  lrc.decay_iters = sched.decay_iters(), lrc.warmup_iters = sched.warmup_iters();
  // Gradient reduction over DP / expert-DP, clipping and the step (parallel_optimizer.h).
  ParallelOptimizer opt(cfg.optim, model, cfg.groups.get(), cfg.distributed_optimizer, cfg.overlap);
  if (opt.overlaps_param_gather()) model.on_params_needed([&opt](int part) { opt.params_needed(part); });
  TrainProgress prog;
  if (!cfg.resume_dir.empty()) {
    // Under TP a checkpoint's whole tensors (any saved layout) are cut to this rank's slices.
    ToLocal to_local;
    if (cfg.groups && cfg.groups->layout().tp > 1) {
      const model::ShardSpec spec(mc, cfg.groups->layout().stage_view(), model::kMakeVocabSizeDivisibleBy);
      to_local = [spec, &mc, tp = cfg.groups->tp().rank()](const std::string& name, const Tensor& whole) {
        const model::StateDict one = model::rank_state(spec, mc, {{name, whole}}, tp, 0, 0);
        return one.begin()->second;
      };
    }
    auto rs = load_training_state(
        cfg.resume_dir, model, opt.local(), cfg.load_optim, cfg.load_rng,
        [&](const std::string& n) { return opt.local_name(n); }, to_local);
    opt.sync_tied_output(rs.had_optimizer);  // the last stage's copy of a tied embedding
    opt.load();
    prog = rs.progress;
    if (rs.had_rng) loader.restore(prog.data);
    log().info("resuming at iteration {} (optimizer state {}, data position {})", prog.iteration,
               rs.had_optimizer ? "restored" : "fresh", rs.had_rng ? "restored" : "from the start");
  }
  const JsonlLog jl((fs::path(cfg.out_dir) / "logging.jsonl").string());
  // TensorBoard gets every number of each train and eval line (tags train/<key>, eval/<key>).
  std::unique_ptr<TensorBoardWriter> tb;
  if (cfg.writer && !cfg.tensorboard_dir.empty()) tb = std::make_unique<TensorBoardWriter>(cfg.tensorboard_dir);
  auto write_line = [&](const nlohmann::json& line, const char* tb_prefix = nullptr, int64_t step = 0) {
    if (!cfg.writer) return;
    jl.write(line);
    if (tb && tb_prefix) tb->line(tb_prefix, line, step);
  };
  PlotHistory hist;
  hist.expert_load.assign(size_t(mc.num_layers), std::vector<double>(size_t(std::max(mc.num_experts, 0)), 0.0));
  const size_t iters_left = size_t(std::max<int64_t>(train_iters - prog.iteration, 0));  // no growth in the loop
  hist.loss.reserve(iters_left), hist.lr.reserve(iters_left), hist.grad_norm.reserve(iters_left);
  TrainResult res;
  res.best_eval_loss = std::numeric_limits<double>::infinity();
  const double flops_per_token = 6.0 * double(mc.num_active_parameters());
  const auto t_start = std::chrono::steady_clock::now();
  const int64_t first_iter = prog.iteration;
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count(); };

  IterationReport report;
  auto evaluate = [&](int64_t iter) {
    if (data.val.empty()) return;
    DataLoader ev(data.val, cfg.micro_batch_size, false, cfg.max_length, cfg.seed, false);
    const int64_t batches = cfg.eval_iters > 0 ? int64_t(cfg.eval_iters) * accum
                                               : std::max<int64_t>(1, ev.rows_per_epoch() / cfg.micro_batch_size);
    model::StepStats st;
    st.tokens_per_expert.assign(size_t(mc.num_layers) * size_t(std::max(mc.num_experts, 0)), 0);
    MicroBatch mb, mb_local;
    // Under EP every MoE layer exchanges rows with the EP group, so every rank runs as many
    // micro-batches: a rank left without one reruns its last and drops the result.
    const bool lockstep = cfg.groups && cfg.groups->ep().size() > 1;
    const int64_t rounds = (batches + dp.size - 1) / dp.size * dp.size;
    std::vector<MicroBatch> staged;  // pipeline: this rank's micro-batches, run through the stages at once
    std::vector<bool> counted;
    for (int64_t b = 0; b < rounds; ++b) {
      if (b < batches) ev.next(mb);
      if (!dp.mine(size_t(b))) continue;
      if (pipe.group) {
        if (b < batches || lockstep) staged.push_back(mb), counted.push_back(b < batches);
      } else if (b < batches) {
        st.add(model.evaluate(cp.view(mb, mb_local)));
      } else if (lockstep) {
        model.evaluate(cp.view(mb, mb_local));
      }
    }
    if (pipe.group) {  // every stage of this CP rank's pipeline runs its rows of the same micro-batches
      std::vector<MicroBatch> staged_local(staged.size());
      std::vector<model::MicroBatchView> views;
      views.reserve(staged.size());
      for (size_t i = 0; i < staged.size(); ++i) views.push_back(cp.view(staged[i], staged_local[i]));
      const auto per_batch = run_forward(model, *pipe.group, views);
      for (size_t i = 0; i < per_batch.size(); ++i)
        if (counted[i]) st.add(per_batch[i]);
    }
    dp.sum(st);
    pipe.sum(st);
    const double loss = st.lm_loss_sum / double(std::max<int64_t>(st.loss_tokens, 1));
    const double acc = double(st.correct) / double(std::max<int64_t>(st.loss_tokens, 1));
    report.lines.push_back(eval_line({{"loss", loss}, {"acc", acc}}, iter, train_iters));
    write_line(report.lines.back(), "eval", iter);
    if (tb) {  // Megatron's validation tags
      const int64_t samples = int64_t(iter) * cfg.global_batch_size;
      tb->scalar("lm loss validation", iter, loss);
      tb->scalar("lm loss validation vs samples", samples, loss);
      if (cfg.tensorboard.validation_ppl) {
        const double ppl = std::exp(std::min(loss, 20.0));  // Megatron clamps the exponent at 20
        tb->scalar("lm loss validation ppl", iter, ppl);
        tb->scalar("lm loss validation ppl vs samples", samples, ppl);
      }
    }
    hist.eval_loss.push_back({double(iter), loss});
    if (loss < res.best_eval_loss) res.best_eval_loss = loss, res.best_checkpoint = cfg.out_dir;
  };
  auto save = [&](int64_t iter) {
    if (!cfg.save) return;
    prog.iteration = iter, prog.data = loader.position();
    const Optimizer no_state(cfg.optim);
    if (!cfg.groups || cfg.groups->layout().world() == 1) {
      const auto whole = opt.whole_state(cfg.ckpt.save_optim);  // the model's own tensors and state
      save_checkpoint(cfg.out_dir, mc, whole.params, model.buffers(), whole.optimizer ? *whole.optimizer : no_state,
                      lrc, prog, cfg.ckpt);
    } else {
      save_job_checkpoint(cfg, model, opt, no_state, lrc, prog);
    }
    if (!cfg.writer) return;
    res.last_checkpoint = cfg.out_dir;
    write_training_plots(cfg.out_dir, hist);
  };
  // Lines go to the app's callback (its progress bar) or to the log.
  auto flush_report = [&](int64_t iter, double loss, double lr) {
    report.iteration = iter, report.total = train_iters, report.elapsed_s = elapsed();
    report.loss = loss, report.lr = lr;
    if (!cfg.writer) report.lines.clear();
    else if (cfg.on_iteration) cfg.on_iteration(report);
    else
      for (const auto& l : report.lines) log().info("{}", l.dump());
    report.lines.clear();
  };

  // Window sums for the log line.
  double win_loss = 0, win_aux = 0, win_z = 0, win_time = 0;
  int64_t win_tokens = 0, win_correct = 0, win_steps = 0, win_train_tokens = 0;
  std::vector<int64_t> win_load(size_t(mc.num_layers) * size_t(std::max(mc.num_experts, 0)), 0);  // tokens per expert
  // A global batch's micro-batches, their buffers reused from step to step.
  std::vector<MicroBatch> mbs(static_cast<size_t>(accum));
  std::vector<MicroBatch> cp_local(mbs.size());  // context parallelism: this rank's rows of each
  std::vector<float> loss_scales(static_cast<size_t>(accum));
  for (int64_t iter = prog.iteration + 1; iter <= train_iters; ++iter) {
    const auto t0 = std::chrono::steady_clock::now();
    int64_t loss_tokens = 0;
    for (auto& mb : mbs) {
      loader.next(mb);
      loss_tokens += mb.loss_tokens();
    }
    model.zero_grad();
    model::StepStats st;
    st.tokens_per_expert.assign(size_t(mc.num_layers) * size_t(std::max(mc.num_experts, 0)), 0);
    // Each micro-batch's scale of its summed token losses: 1 / the global batch's tokens, or
    // (per-micro-batch averaging) 1 / (its own tokens x the global batch's micro-batches).
    for (size_t j = 0; j < mbs.size(); ++j)
      loss_scales[j] = cfg.calculate_per_token_loss
                           ? 1.0f / float(std::max<int64_t>(loss_tokens, 1))
                           : 1.0f / float(std::max<int64_t>(mbs[j].loss_tokens(), 1) * int64_t(accum));
    if (opt.overlaps_grad_reduce()) {  // buckets start reducing as the last backward of the step finishes them
      int mine = 0;
      for (size_t j = 0; j < mbs.size(); ++j) mine += dp.mine(j) ? 1 : 0;
      opt.begin_overlapped_reduce();
      model.on_final_grads([&opt](int part) { opt.grads_final(part); }, mine);
    }
    if (pipe.group) {  // this DP rank's micro-batches through the pipeline, 1F1B
      std::vector<model::MicroBatchView> mine;
      std::vector<float> mine_scales;
      for (size_t j = 0; j < mbs.size(); ++j)
        if (dp.mine(j)) mine.push_back(cp.view(mbs[j], cp_local[j])), mine_scales.push_back(loss_scales[j]);
      st.add(model.chunks() > 1
                 ? run_interleaved(model, *pipe.group, mine, mine_scales, 1.0f / float(accum), &pipe.times)
                 : run_1f1b(model, *pipe.group, mine, mine_scales, 1.0f / float(accum), &pipe.times));
    }
    for (size_t j = 0; j < mbs.size(); ++j) {
      if (!pipe.group && dp.mine(j))
        st.add(model.forward_backward(cp.view(mbs[j], cp_local[j]), loss_scales[j], 1.0f / float(accum)));
      win_train_tokens += int64_t(mbs[j].tokens.size());
    }
    model.on_final_grads({}, 0);
    const double grad_norm = opt.reduce_and_clip(cfg.clip_grad);
    dp.sum(st);
    pipe.sum(st);
    const double loss = st.lm_loss_sum / double(std::max<int64_t>(st.loss_tokens, 1));
    const double lr = sched.lr_at(iter - 1);  // Megatron: the schedule steps after the update
    // The gradients' bound after clipping: every element is at most the global L2 norm.
    const double grad_bound = cfg.clip_grad > 0 ? std::min(grad_norm, cfg.clip_grad) : grad_norm;
    if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
      ++prog.skipped_iters;
      log().warn("iteration {}: loss {} / grad norm {} not finite, step skipped", iter, loss, grad_norm);
    } else if (!opt.step(float(lr), grad_bound)) {
      ++prog.skipped_iters;
      log().warn("iteration {}: the update at lr {} would make weights non-finite, step skipped", iter, lr);
    } else {
      model.update_expert_bias(st.tokens_per_expert);
    }
    prog.consumed_samples += cfg.global_batch_size;
    const double params_norm = cfg.tensorboard.params_norm ? opt.params_norm() : 0.0;  // after the update
    for (int l = 0; l < mc.num_layers; ++l)
      for (int e = 0; e < mc.num_experts; ++e)
        hist.expert_load[size_t(l)][size_t(e)] +=
            double(st.tokens_per_expert[size_t(l) * size_t(mc.num_experts) + size_t(e)]);
    win_time += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    win_loss += st.lm_loss_sum, win_tokens += st.loss_tokens, win_correct += st.correct;
    win_aux += st.aux_loss / accum, win_z += st.z_loss / accum, ++win_steps;
    for (size_t i = 0; i < win_load.size() && i < st.tokens_per_expert.size(); ++i)
      win_load[i] += st.tokens_per_expert[i];
    if (tb && iter % std::max(cfg.tensorboard.log_interval, 1) == 0) {
      // Megatron's tags for this iteration (training_log): each also against consumed samples.
      const double step_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      auto both = [&](const std::string& tag, double v) {
        tb->scalar(tag, iter, v);
        tb->scalar(tag + " vs samples", prog.consumed_samples, v);
      };
      if (cfg.tensorboard.learning_rate) both("learning-rate", lr);
      both("batch-size", double(cfg.global_batch_size));
      both("lm loss", loss);
      if (mc.num_experts > 0) {
        both("load_balancing_loss", st.aux_loss / double(accum));
        both("z_loss", st.z_loss / double(accum));
      }
      tb->scalar("world-size", iter, double(cfg.groups ? cfg.groups->layout().world() : 1));
      both("grad-norm", grad_norm);
      if (cfg.tensorboard.params_norm) both("params-norm", params_norm);
      if (cfg.tensorboard.timers) tb->scalar("iteration-time", iter, step_s);
      if (cfg.tensorboard.throughput) {
        const double tflops = double(loss_tokens) * flops_per_token / std::max(step_s, 1e-9) / 1e12;
        tb->scalar("throughput", iter, tflops / double(cfg.groups ? cfg.groups->layout().world() : 1));
      }
      if (cfg.tensorboard.memory) tb->scalar("mem-max-allocated-bytes", iter, peak_rss_gib() * double(1 << 30));
      // Per-layer expert load, under Megatron's per-layer tag pattern (track_moe_metrics'
      // moe/<name>_layer_<i>, global layer index).
      for (const auto& [l, v] : expert_load_imbalance(mc, st.tokens_per_expert))
        tb->scalar(fmt::format("moe/expert_load_imbalance_layer_{}", l), iter, v);
    }
    hist.loss.push_back({double(iter), loss}), hist.lr.push_back({double(iter), lr});
    hist.grad_norm.push_back({double(iter), grad_norm});
    res.last_loss = loss;

    if (iter == first_iter + 1 || iter % cfg.log_interval == 0 || iter == train_iters) {
      const double per_it = win_time / double(win_steps);
      const double tok_s = double(win_train_tokens) / std::max(win_time, 1e-9);
      nlohmann::json line = {{"loss", win_loss / double(std::max<int64_t>(win_tokens, 1))},
                             {"acc", double(win_correct) / double(std::max<int64_t>(win_tokens, 1))},
                             {"grad_norm", grad_norm},
                             {"learning_rate", lr}};
      if (cfg.tensorboard.params_norm) line["params_norm"] = params_norm;
      if (mc.num_experts > 0) {
        // swift's key names the balancing type (seq_load_balancing_loss for seq_aux_loss).
        const bool per_seq = model.options().moe.load_balancing_type == "seq_aux_loss";
        line[per_seq ? "seq_load_balancing_loss" : "load_balancing_loss"] = win_aux / double(win_steps);
        line["z_loss"] = win_z / double(win_steps);
        // Each MoE layer's expert load imbalance over the window's tokens.
        for (const auto& [l, v] : expert_load_imbalance(mc, win_load))
          line[fmt::format("expert_load_imbalance_layer_{}", l)] = v;
      }
      line["skipped_iters"] = prog.skipped_iters;
      line["tokens_per_s"] = tok_s;
      line["tflops"] = tok_s * flops_per_token / 1e12;
      line["iteration"] = iteration_field(iter, train_iters);
      line["elapsed_time"] = format_duration(elapsed());
      line["remaining_time"] = format_duration(per_it * double(train_iters - iter));
      line["memory(GiB)"] = peak_rss_gib();
      line["train_speed(s/it)"] = per_it;
      write_line(line, "train", iter);
      report.lines.push_back(std::move(line));
      win_loss = win_aux = win_z = win_time = 0, win_tokens = win_correct = win_steps = win_train_tokens = 0;
      std::fill(win_load.begin(), win_load.end(), 0);
    }
    if (iter == train_iters) res.train_peak_rss_gib = peak_rss_gib();
    if (iter == train_iters || (cfg.eval_interval > 0 && iter % cfg.eval_interval == 0)) evaluate(iter);
    if (cfg.save_interval > 0 && iter % cfg.save_interval == 0 && iter != train_iters) save(iter);
    flush_report(iter, loss, lr);
  }
  res.iterations = train_iters, res.skipped = prog.skipped_iters;
  model.on_params_needed({});
  opt.finish_param_gather();
  std::tie(res.buckets_overlapped, res.buckets) = opt.overlapped_buckets();
  if (first_iter >= train_iters) {  // resumed with nothing left to train: still evaluate
    evaluate(train_iters);
    flush_report(train_iters, res.last_loss, sched.lr_at(train_iters - 1));
  }
  save(train_iters);
  if (cfg.writer) write_training_plots(cfg.out_dir, hist);
  if (pipe.group) {
    res.pipeline_stage = pipe.group->rank(), res.pipeline_stages = pipe.group->size();
    res.pipeline_micro_batches = accum / dp.size, res.pipeline_chunks = model.chunks();
    res.pipeline_compute_s = pipe.times.compute_s, res.pipeline_total_s = pipe.times.total_s;
    res.pipeline_stage_compute_s.resize(size_t(res.pipeline_stages));
    pipe.group->all_gather(&res.pipeline_compute_s, res.pipeline_stage_compute_s.data(), 1, dist::DataType::kF64);
  }
  nlohmann::json fin = summary_line(res.last_checkpoint, res.best_checkpoint, res.best_eval_loss);
  fin["global_step"] = train_iters;
  fin["memory(GiB)"] = peak_rss_gib();
  write_line(fin);
  return res;
}

}  // namespace moe::train
