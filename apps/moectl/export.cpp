// `moectl export`: HF <-> Megatron checkpoint conversion with swift's flags
// (--model HF --to_mcore true / --mcore_model DIR --to_hf true, --output_dir, --torch_dtype).
#include "commands.h"
#include "core/error.h"
#include "core/log.h"

#include <cctype>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>

#include "checkpoint/convert_precision.h"
#include "checkpoint/mcore_export.h"
#include "kernels/device.h"
#include "train/metrics.h"

namespace moectl {

namespace {

// "5GB", "500MB", "1.5GiB", "1000000" -> bytes (decimal units as in transformers' max_shard_size).
// Checked as a double before it becomes an integer: 20000000000GB once wrapped to a few bytes
// and gave one shard per tensor.
uint64_t parse_size(const std::string& s) {
  constexpr double kMax = 1e15;  // 1 PB: far past any shard, far below 2^64
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (...) {
    moe::throw_input("--max_shard_size '{}': expected a size such as 5GB or 500MB", s);
  }
  std::string unit = s.substr(pos);
  for (auto& ch : unit) ch = char(std::toupper(static_cast<unsigned char>(ch)));
  const double mult = unit.empty() || unit == "B" ? 1
                      : unit == "KB"              ? 1e3
                      : unit == "MB"              ? 1e6
                      : unit == "GB"              ? 1e9
                      : unit == "KIB"             ? 1024.0
                      : unit == "MIB"             ? 1048576.0
                      : unit == "GIB"             ? 1073741824.0
                                                  : -1;
  if (mult < 0 || !(v > 0)) moe::throw_input("--max_shard_size '{}': expected a size such as 5GB or 500MB", s);
  const double bytes = v * mult;
  if (!(bytes >= 1 && bytes <= kMax))
    moe::throw_input("--max_shard_size '{}': expected a size from 1 byte to 1000000GB (1 PB), such as 5GB or 500MB", s);
  return uint64_t(bytes);
}

// Progress of an export: on a terminal, train's tqdm-style bar over tensors with bytes, rate and
// ETA after it; otherwise (a log file, a pipe) one summary line at the end, with a line at
// every tenth of the bytes before it under --verbose true.
std::function<void(uint64_t, uint64_t, int, int)> export_progress(const std::string& desc, bool verbose) {
  struct State {
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    std::unique_ptr<moe::train::ProgressBar> bar;
    int next_tenth = 1;
  };
  auto st = std::make_shared<State>();
  return [st, desc, verbose](uint64_t done, uint64_t total, int tensors, int tensors_total) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - st->start).count();
    const double rate = s > 0 ? double(done) / s : 0;
    char info[128];
    std::snprintf(info, sizeof info, "%.2f/%.2f GB, %.0f MB/s, ETA %.0fs", double(done) / 1e9, double(total) / 1e9,
                  rate / 1e6, rate > 0 ? double(total - done) / rate : 0.0);
    if (!st->bar) st->bar = std::make_unique<moe::train::ProgressBar>(desc, tensors_total);
    if (st->bar->enabled()) {
      st->bar->update(tensors, s, info);
      if (done >= total) st->bar->finish();
      return;
    }
    if (done < total && (!verbose || double(done) < double(total) * st->next_tenth / 10)) return;
    while (st->next_tenth <= 10 && double(done) >= double(total) * st->next_tenth / 10) ++st->next_tenth;
    if (done >= total) {
      std::fprintf(stderr, "%s: done, %d tensors, %.2f GB in %.1fs (%.0f MB/s)\n", desc.c_str(), tensors_total,
                   double(total) / 1e9, s, rate / 1e6);
      return;
    }
    std::fprintf(stderr, "%s: %3.0f%%, %d/%d tensors, %s\n", desc.c_str(),
                 total ? 100.0 * double(done) / double(total) : 100.0, tensors, tensors_total, info);
  };
}

// Runs both models on the same 16 tokens (fp32 compute) and fails above tolerance.
void report_precision(const moe::checkpoint::LoadedModel& src, const moe::checkpoint::LoadedModel& dst,
                      const moe::Backend& backend) {
  std::vector<int32_t> ids;
  ids.reserve(16);
  for (int i = 0; i < 16; ++i) ids.push_back(int32_t((i * 2654435761u + 17) % uint32_t(src.config.vocab_size)));
  const auto r = moe::checkpoint::compare_models(src, dst, ids, backend);
  std::printf(
      "test_convert_precision: %d tokens, max_abs_diff %.3g, mean_abs_diff %.3g, relative L2 %.3g, "
      "argmax mismatches %d\n",
      r.tokens, r.max_abs_diff, r.mean_abs_diff, r.rel_l2, r.argmax_mismatches);
  if (r.mean_abs_diff > 0.1)  // swift's bar for a sound conversion
    moe::throw_internal("converted model disagrees with its source: mean_abs_diff {:.3g} > 0.1", r.mean_abs_diff);
}

}  // namespace

void add_export_command(CLI::App& root) {
  struct Args {
    std::string model, mcore_model, output_dir, dtype, max_shard_size = "5GB", ckpt_format = "torch_dist";
    std::string device = "cpu";
    int thread_count = 2;
    bool to_mcore = false, to_hf = false, overwrite = false, verbose = false, test_precision = false;
    int tp = 1, pp = 1, ep = 1, etp = -1;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = root.add_subcommand("export", "Convert between Hugging Face and Megatron checkpoint formats");
  c->add_option("--model", a->model, "Hugging Face model directory (with --to_mcore true)");
  c->add_option("--mcore_model", a->mcore_model,
                "Megatron checkpoint directory (with --to_hf true, or --to_mcore true to change its format/layout)");
  c->add_option("--ckpt_format", a->ckpt_format,
                "Megatron format written by --to_mcore: torch_dist (default, as Megatron-LM and swift) or torch");
  c->add_option("--thread_count", a->thread_count, "torch_dist: .distcp files written in parallel (default 2)");
  c->add_option("--to_mcore", a->to_mcore, "HF -> Megatron (true|false)");
  c->add_option("--to_hf", a->to_hf, "Megatron -> HF (true|false)");
  c->add_option("--output_dir", a->output_dir, "Where the converted model is written")->required();
  c->add_option("--torch_dtype", a->dtype, "bfloat16 | float16 | float32 (default: the source's dtype)");
  // swift's --exist_ok lets an export go to an existing directory; moectl replaces it whole (staged
  // beside it and renamed), so no file of an earlier export mixes with the new one.
  c->add_option("--overwrite,--exist_ok", a->overwrite,
                "Replace an existing non-empty output directory (true|false; --exist_ok is swift's name)");
  c->add_option("--tensor_model_parallel_size", a->tp, "Tensor-parallel ranks to shard for (--to_mcore)");
  c->add_option("--pipeline_model_parallel_size", a->pp, "Pipeline stages to shard for (--to_mcore)");
  c->add_option("--expert_model_parallel_size", a->ep, "Expert-parallel ranks to shard for (--to_mcore)");
  c->add_option("--expert_tensor_parallel_size", a->etp,
                "Expert tensor-parallel size: expert weights split over it instead of TP (default TP; must divide TP)");
  c->add_option("--verbose", a->verbose, "Progress logs (true|false)");
  c->add_option("--max_shard_size", a->max_shard_size, "Largest HF safetensors shard (--to_hf), e.g. 5GB, 500MB");
  c->add_option("--test_convert_precision", a->test_precision,
                "Run the source and the converted model on the same tokens and compare logits (true|false)");
  c->add_option("--device", a->device,
                "Where --test_convert_precision runs the models: cpu (default), cuda, cuda:N, auto");
  c->callback([a] {
    if (a->verbose) moe::set_log_level(spdlog::level::info);
    if (a->to_mcore == a->to_hf) moe::throw_input("give exactly one of --to_mcore true or --to_hf true");
    moe::checkpoint::ExportOptions opt;
    if (!a->dtype.empty()) {  // unset: the source's own dtype, as swift keeps it (issue 12)
      moe::DType dt;
      if (!moe::parse_torch_dtype(a->dtype, &dt))
        moe::throw_input("--torch_dtype '{}': expected bfloat16, float16 or float32", a->dtype);
      opt.dtype = dt;
    }
    opt.overwrite = a->overwrite;
    if (a->etp == 0 || a->etp < -1)
      moe::throw_input(
          "--expert_tensor_parallel_size {}: expected a size >= 1 that divides --tensor_model_parallel_size", a->etp);
    opt.layout = {.tp = a->tp, .pp = a->pp, .ep = a->ep, .etp = a->etp == -1 ? a->tp : a->etp};
    opt.max_shard_bytes = parse_size(a->max_shard_size);
    opt.progress = export_progress(a->to_mcore ? "to_mcore" : "to_hf", a->verbose);
    opt.format = moe::checkpoint::parse_ckpt_format("--ckpt_format", a->ckpt_format);
    if (a->thread_count < 1 || a->thread_count > 64)
      moe::throw_input("--thread_count {}: expected 1 to 64 files per writer", a->thread_count);
    opt.thread_count = a->thread_count;
    // Resolved before the export: a bad --device costs nothing.
    const moe::Backend backend = a->test_precision ? moe::backend_for_device(a->device) : moe::Backend{};
    if (a->to_mcore) {
      if (a->model.empty() == a->mcore_model.empty())
        moe::throw_input("--to_mcore true needs --model HF_DIR or --mcore_model MCORE_DIR (one of them)");
      const std::string src = a->model.empty() ? a->mcore_model : a->model;
      moe::checkpoint::export_hf_to_mcore(src, a->output_dir, opt);
      if (a->test_precision)
        report_precision(a->model.empty() ? moe::checkpoint::load_mcore_model(src, moe::DType::F32)
                                          : moe::checkpoint::load_hf_model(src),
                         moe::checkpoint::load_mcore_model(a->output_dir, moe::DType::F32), backend);
    } else {
      if (a->mcore_model.empty()) moe::throw_input("--to_hf true needs --mcore_model DIR");
      moe::checkpoint::export_mcore_to_hf(a->mcore_model, a->output_dir, opt);
      if (a->test_precision)
        report_precision(moe::checkpoint::load_mcore_model(a->mcore_model, moe::DType::F32),
                         moe::checkpoint::load_hf_model(a->output_dir), backend);
    }
  });
}

}  // namespace moectl
