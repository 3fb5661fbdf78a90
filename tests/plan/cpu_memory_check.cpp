// The planner's memory model for moectl's CPU engine (Engine::kMoectlCpu) against the measured
// peak memory of real training runs: for each layout (recompute none/selective/full, micro-batch
// 1/2/4, two sequence lengths) this binary re-runs itself as a child process that goes the way
// `moectl pt --dataset dummy#N` goes (config.json + tokenizer, random init, TrainModel,
// run_training with AdamW, 2 iterations) and reports the trainer's own peak-memory field
// (logging.jsonl memory(GiB), ru_maxrss) and the RSS before the model existed. The planner's
// weights + gradients + optimizer + activations must be within 15% of peak - baseline.
//   moe_plan_cpu_memory_check                 the ctest (a scaled shape, 8 runs, ~40 s on 2 cores)
//   MOE_CPU_MEMORY_FULL=1 moe_plan_cpu_memory_check   the training benchmark's model (minutes)
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/allocator.h"
#include "core/log.h"
#include "core/parallel.h"
#include "kernels/cpu/gemm.h"
#include "model/hf_config.h"
#include "model/init_weights.h"
#include "model/train_model.h"
#include "plan/memory_model.h"
#include "testutil.h"
#include "text/chat_template.h"
#include "train/trainer.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using namespace moe;

constexpr double kMiB = 1024.0 * 1024.0;

// VmRSS or VmHWM of this process in bytes.
double proc_status_bytes(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(f, line))
    if (line.compare(0, n, key) == 0 && line.size() > n && line[n] == ':') return std::stod(line.substr(n + 1)) * 1024;
  throw_internal("/proc/self/status has no {}", key);
}

// OpenBLAS packs into buffers it maps on first use per thread; a product as wide as the LM
// head's makes them resident now, so they count as the process baseline. The operands come
// from mmap, so malloc's state (its dynamic mmap threshold) is what the run alone makes it.
void warm_up_gemm(int64_t M, int64_t N, int64_t K) {
  const size_t bytes = size_t(M * K + N * K + M * N) * sizeof(float);
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw_internal("mmap of {} bytes failed", bytes);
  float* a = static_cast<float*>(p);
  float* b = a + M * K;
  float* c = b + N * K;
  std::memset(p, 0, bytes);
  kernels::cpu::gemm_nt(M, N, K, a, b, c, false);
  munmap(p, bytes);
}

// One training run, as apps/moectl/train.cpp runs `moectl pt` (minus the CLI and args.json).
int run_child(const std::string& dir, const std::string& recompute, int mbs, int seq, const std::string& out) {
  set_log_level(spdlog::level::warn);
  const model::ModelConfig cfg = model::load_hf_config(dir);
  auto tok = text::Tokenizer::load(dir);
  auto tmpl = text::make_template(text::default_template_for(cfg.model_type, tok.get()));
  train::DatasetOptions d;
  d.specs = {"dummy#" + std::to_string(2 * mbs)};
  d.max_length = seq, d.pretrain = true;
  const train::Datasets data = train::load_datasets(d, *tok, *tmpl);
  nlohmann::json r;
  r["rss_before_openblas"] = proc_status_bytes("VmRSS");
  warm_up_gemm(256 * num_threads(), std::max<int64_t>(cfg.vocab_size, 8192), std::max<int64_t>(cfg.hidden_size, 512));
  r["baseline"] = proc_status_bytes("VmRSS");

  model::TrainOptions o;
  model::parse_recompute(recompute, &o.recompute.granularity);
  if (recompute == "selective") o.recompute.modules = {"core_attn", "layernorm", "moe_act"};
  train::TrainerConfig t;
  t.train_iters = 2;  // the second step's forward/backward runs with the Adam states allocated
  t.micro_batch_size = t.global_batch_size = mbs;
  t.max_length = seq;
  t.log_interval = 1, t.eval_interval = 0, t.save_interval = 0, t.save = false;
  t.lr.lr = 1e-4;
  t.out_dir = out;
  {
    model::StateDict state = model::init_random_state(cfg, 42, DType::F32, 0.02);
    model::TrainModel tm(cfg, state, o);
    state.clear();        // as moectl pt: the trainer holds its own fp32 copy
    keep_freed_memory();  // as moectl pt: freed step buffers stay in the heap
    train::run_training(t, tm, data);
  }
  // The trainer's peak-memory field on the last iteration's line.
  std::ifstream log(fs::path(out) / "logging.jsonl");
  std::string line;
  double peak_gib = -1;
  while (std::getline(log, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss") && j.contains("memory(GiB)")) peak_gib = j["memory(GiB)"].get<double>();
  }
  r["peak"] = peak_gib * 1024.0 * kMiB;
  r["vm_hwm"] = proc_status_bytes("VmHWM");
  r["threads"] = num_threads();
  std::ofstream(fs::path(out) / "result.json") << r.dump() << "\n";
  return peak_gib > 0 ? 0 : 1;
}

struct Shape {
  int hidden, layers, heads, groups, head_dim, experts, topk, moe_ffn, vocab;
};

struct Case {
  std::string recompute;
  int mbs, seq;
};

// A qwen3_moe config.json of `s` next to the tiny model's tokenizer (its 1024 ids are what
// dummy#N draws from; the embedding and LM head have the config's vocabulary).
void write_model_dir(const Shape& s, const std::string& dir) {
  const fs::path src =
      fs::path(std::getenv("MOE_SOURCE_DIR") ? std::getenv("MOE_SOURCE_DIR") : ".") / "configs" / "tiny-moe";
  nlohmann::json c = nlohmann::json::parse(std::ifstream(src / "config.json"));
  c["hidden_size"] = s.hidden, c["num_hidden_layers"] = s.layers, c["num_attention_heads"] = s.heads;
  c["num_key_value_heads"] = s.groups, c["head_dim"] = s.head_dim, c["num_experts"] = s.experts;
  c["num_experts_per_tok"] = s.topk, c["moe_intermediate_size"] = s.moe_ffn, c["vocab_size"] = s.vocab;
  c["torch_dtype"] = "float32";
  std::ofstream(fs::path(dir) / "config.json") << c.dump(2);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) fs::copy_file(src / f, fs::path(dir) / f);
}

nlohmann::json spawn_child(const std::string& dir, const Case& c, const std::string& out) {
  std::vector<std::string> args = {"/proc/self/exe",      "--child", dir, c.recompute, std::to_string(c.mbs),
                                   std::to_string(c.seq), out};
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), environ) != 0) return nullptr;
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return nullptr;
  return nlohmann::json::parse(std::ifstream(fs::path(out) / "result.json"));
}

plan::MemoryEstimate predict(const std::string& dir, const Case& c, double baseline, int threads) {
  const plan::ModelShape m = plan::ModelShape::from_config(model::load_hf_config(dir));
  plan::Layout l;
  l.micro_batch_size = c.mbs;
  plan::parse_recompute(c.recompute, &l.recompute);
  plan::TrainingOptions t;
  t.engine = plan::Engine::kMoectlCpu;
  t.precision = plan::Precision::kFp32;
  t.use_distributed_optimizer = false;
  t.seq_length = c.seq;
  t.global_batch_size = c.mbs;
  t.cpu_process_bytes = baseline;
  t.cpu_threads = threads;
  return plan::estimate_memory(m, l, t);
}

void check(const Shape& s, const std::vector<Case>& cases) {
  moe::testing::TempDir tmp;
  const std::string dir = tmp.file("model");
  fs::create_directories(dir);
  write_model_dir(s, dir);
  std::printf(
      "moectl CPU engine, hidden %d, %d layers, %d/%d heads of %d, %d experts top-%d, moe_ffn %d, vocab %d "
      "(fp32 weights + grads + AdamW = 16 B/param)\n",
      s.hidden, s.layers, s.heads, s.groups, s.head_dim, s.experts, s.topk, s.moe_ffn, s.vocab);
  std::printf("%-10s %3s %4s | %9s %9s %9s %9s | %9s %9s | %8s %9s %9s | %7s\n", "recompute", "mbs", "seq", "states",
              "layers", "working", "pred", "measured", "", "baseline", "pred+bl", "peak", "error");
  std::printf("%-10s %3s %4s | %9s %9s %9s %9s | %9s %9s | %8s %9s %9s | %7s\n", "", "", "", "MiB", "MiB", "MiB", "MiB",
              "MiB", "(HWM)", "MiB", "MiB", "MiB", "");
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const std::string out = tmp.file("run" + std::to_string(i));
    fs::create_directories(out);
    const nlohmann::json r = spawn_child(dir, c, out);
    ASSERT_FALSE(r.is_null()) << "training run " << c.recompute << " mbs " << c.mbs << " seq " << c.seq << " failed";
    const double baseline = r["baseline"], peak = r["peak"], hwm = r["vm_hwm"];
    const plan::StageMemory p = predict(dir, c, baseline, r["threads"]).peak();
    const double measured = peak - baseline, predicted = p.allocated();
    const double err = predicted / measured - 1;
    std::printf("%-10s %3d %4d | %9.1f %9.1f %9.1f %9.1f | %9.1f %9.1f | %8.1f %9.1f %9.1f | %+6.1f%%\n",
                c.recompute.c_str(), c.mbs, c.seq, (p.weights + p.gradients + p.optimizer) / kMiB, p.act_layers / kMiB,
                (p.act_working + p.act_logits) / kMiB, predicted / kMiB, measured / kMiB, (hwm - baseline) / kMiB,
                baseline / kMiB, p.total() / kMiB, peak / kMiB, 100 * err);
    std::fflush(stdout);
    EXPECT_LE(std::abs(err), 0.15) << c.recompute << " mbs " << c.mbs << " seq " << c.seq << ": predicted "
                                   << predicted / kMiB << " MiB, measured " << measured / kMiB << " MiB";
    // Baseline before the OpenBLAS warm-up, for the record.
    if (i == 0)
      std::printf("(baseline: %.1f MiB before OpenBLAS's buffers, %.1f MiB after; %d threads)\n",
                  double(r["rss_before_openblas"]) / kMiB, baseline / kMiB, int(r["threads"]));
  }
}

TEST(plan_cpu_memory, PlannerWithin15PercentOfMeasuredPeakRss) {
  // The training benchmark's model (tests/bench/bench_train.cpp) at full size, or scaled so a run
  // takes about a second: half the width, a quarter of the vocabulary, half the experts.
  const bool full = std::getenv("MOE_CPU_MEMORY_FULL") != nullptr;
  const Shape s = full ? Shape{512, 4, 8, 4, 64, 64, 8, 256, 32000} : Shape{256, 4, 8, 4, 32, 32, 8, 128, 8000};
  const int seq = full ? 512 : 256;
  std::vector<Case> cases;
  for (const char* r : {"none", "selective", "full"})
    for (int mbs : full ? std::vector<int>{1, 2, 4} : std::vector<int>{1, 4}) cases.push_back({r, mbs, seq});
  cases.push_back({"none", 2, 2 * seq});
  cases.push_back({"full", 2, 2 * seq});
  check(s, cases);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 7 && std::string(argv[1]) == "--child") {
    try {
      return run_child(argv[2], argv[3], std::atoi(argv[4]), std::atoi(argv[5]), argv[6]);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
      return 2;
    }
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
