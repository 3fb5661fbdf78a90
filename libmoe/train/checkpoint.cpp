#include "train/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>
#include "checkpoint/load_hf.h"
#include "checkpoint/mcore_export.h"
#include "core/error.h"
#include "core/log.h"
#include "core/mapped_file.h"
#include "core/output_dir.h"
#include "io/torch_file.h"
#include "model/state_dict.h"

namespace moe::train {

namespace fs = std::filesystem;
using io::PyValue;

namespace {

std::string iter_dir_name(int64_t it) {
  char b[32];
  std::snprintf(b, sizeof b, "iter_%07lld", static_cast<long long>(it));
  return b;
}

bool is_vocab(const std::string& n) { return n == model::names::kEmbedding || n == model::names::kOutput; }

// fp32 tensor viewed over floats it does not own (they must outlive the write).
Tensor borrow_f32(std::span<const float> v, const Shape& s) { return Tensor::borrow(s, DType::F32, v.data(), nullptr); }

// A checkpoint never holds a NaN or an infinity (QA #10): the trainer skips steps that would
// make one, so what remains is a weight beyond the saved dtype's range.
void check_finite(const Tensor& t, const std::string& name, int64_t iteration) {
  if (count_non_finite(t.raw(), t.dtype(), size_t(t.numel())) == 0) return;
  if (t.dtype() != DType::F32)
    throw_input(
        "iteration {}: '{}' has values beyond {}'s range; no checkpoint written: pass --torch_dtype float32 "
        "(or bfloat16) or lower --lr",
        iteration, name, torch_dtype_name(t.dtype()));
  throw_internal("iteration {}: '{}' holds non-finite values; no checkpoint written", iteration, name);
}

}  // namespace

CheckpointSave::CheckpointSave(const std::string& dir, int64_t iteration)
    : dir_(dir), iteration_(iteration), staged_("--save", fs::path(dir) / iter_dir_name(iteration), true) {}

void write_rank_file(const fs::path& rank_dir, const model::ModelConfig& c, const dist::ParallelLayout& layout,
                     const model::StateDict& params, const model::StateDict& buffers, const Optimizer& opt,
                     const LrScheduleConfig& lr, const TrainProgress& p, const CheckpointOptions& o) {
  checkpoint::ExportOptions eo;
  eo.dtype = o.dtype, eo.layout = layout;
  const model::ShardSpec spec(c, eo.layout, eo.make_vocab_size_divisible_by);
  const int64_t Vp = spec.padded_vocab();
  fs::create_directories(rank_dir);

  std::vector<std::pair<std::string, Tensor>> storages;
  auto add = [&](const Tensor& t) {
    const std::string key = std::to_string(storages.size());
    storages.push_back({key, t});
    return PyValue::tensor_ref(io::contiguous_ref(key, t.dtype(), t.shape()));
  };
  auto model_dict = PyValue::container(PyValue::kOrderedDict);
  for (const auto& [name, t] : params) {
    check_finite(t, name, p.iteration);
    Tensor w = t.to(o.dtype);
    check_finite(w, name, p.iteration);
    if (is_vocab(name) && Vp != w.dim(0)) {
      Tensor padded({Vp, w.dim(1)}, o.dtype);
      std::memcpy(padded.raw(), w.raw(), w.nbytes());
      w = padded;
    }
    model_dict->set(name, add(w));
  }
  for (const auto& [name, b] : buffers) {  // the expert bias, fp32 as Megatron keeps it
    check_finite(b, name, p.iteration);
    model_dict->set(name, add(b));
  }
  for (int l = 0; l < c.num_layers; ++l)
    for (const auto& e : checkpoint::te_extra_states(c, l)) model_dict->set(e, PyValue::none());
  if (c.untie_embeddings_and_output_weights) model_dict->set("output_layer._extra_state", PyValue::none());
  auto root = PyValue::container(PyValue::kDict);
  root->set("args", checkpoint::megatron_args(c, eo, spec));
  root->set("checkpoint_version", PyValue::floating(3.0));
  root->set("iteration", PyValue::integer(p.iteration));
  root->set("model", model_dict);
  if (o.save_optim) {
    // torch.optim's state_dict: state keyed by parameter index, one param group; plus the fp32
    // masters (Megatron's fp32_from_fp16_params) and the names that give the indices meaning.
    auto st = PyValue::container(PyValue::kDict);
    auto names = PyValue::container(PyValue::kList), index = PyValue::container(PyValue::kList);
    auto masters = PyValue::container(PyValue::kList);
    int64_t i = 0;
    for (const auto& [name, t] : params) {
      auto entry = PyValue::container(PyValue::kDict);
      for (const auto& k : opt.state_keys())  // torch's order; none before the first step or restore
        if (const auto v = opt.state(name, k); opt.has_state() && v.size() == size_t(t.numel())) {
          Tensor sv = borrow_f32(v, t.shape());
          check_finite(sv, fmt::format("{} {}", name, k), p.iteration);
          entry->set(k, add(sv));
        }
      entry->set("step", PyValue::integer(opt.steps()));
      st->entries.push_back({PyValue::integer(i), entry});
      names->items.push_back(PyValue::str(name)), index->items.push_back(PyValue::integer(i));
      masters->items.push_back(add(t));
      ++i;
    }
    auto group = PyValue::container(PyValue::kDict);
    const auto& oc = opt.config();
    group->set("lr", PyValue::floating(lr.lr)), group->set("weight_decay", PyValue::floating(oc.weight_decay));
    auto betas = PyValue::container(PyValue::kTuple);
    betas->items = {PyValue::floating(oc.beta1), PyValue::floating(oc.beta2)};
    group->set("betas", betas), group->set("eps", PyValue::floating(oc.eps)), group->set("params", index);
    auto groups = PyValue::container(PyValue::kList);
    groups->items.push_back(group);
    auto inner = PyValue::container(PyValue::kDict);
    inner->set("state", st), inner->set("param_groups", groups);
    auto od = PyValue::container(PyValue::kDict);
    od->set("optimizer", inner), od->set("fp32_from_fp16_params", masters), od->set("param_names", names);
    od->set("optimizer_type", PyValue::str(oc.type));
    root->set("optimizer", od);
    auto sched = PyValue::container(PyValue::kDict);
    sched->set("max_lr", PyValue::floating(lr.lr)), sched->set("min_lr", PyValue::floating(lr.min_lr));
    sched->set("lr_warmup_steps", PyValue::integer(lr.warmup_iters));
    sched->set("lr_decay_steps", PyValue::integer(lr.decay_iters)),
        sched->set("lr_decay_style", PyValue::str(lr.style));
    sched->set("num_steps", PyValue::integer(p.iteration));
    root->set("opt_param_scheduler", sched);
  }
  if (o.save_rng) {
    auto r = PyValue::container(PyValue::kDict);
    r->set("moectl_data_epoch", PyValue::integer(p.data.epoch));
    r->set("moectl_data_index", PyValue::integer(p.data.index));
    r->set("moectl_data_seed", PyValue::integer(int64_t(p.data.seed)));
    r->set("moectl_consumed_samples", PyValue::integer(p.consumed_samples));
    r->set("moectl_skipped_iters", PyValue::integer(p.skipped_iters));
    auto list = PyValue::container(PyValue::kList);
    list->items.push_back(r);
    root->set("rng_state", list);
  }
  io::write_torch_file((rank_dir / "model_optim_rng.pt").string(), *root, storages);
}

std::string CheckpointSave::finish(const model::ModelConfig& c, const model::StateDict* hf_params,
                                   const model::StateDict& buffers, const CheckpointOptions& o) {
  staged_.commit();
  if (!fs::exists(fs::path(dir_) / "config.json")) checkpoint::copy_side_files(o.source_dir, dir_, o.dtype, c);

  // The HF copy is complete before the tracker names this iteration: a kill while it is written
  // leaves the previous iteration as the latest, and a resume saves this one again whole (QA #18).
  std::string hf;
  if (o.save_safetensors && hf_params) {
    StagedDir hf_dir("--save", fs::path(dir_) / ("checkpoint-" + std::to_string(iteration_)), true);
    model::StateDict out;
    for (const auto& [name, t] : *hf_params) out[name] = t.to(o.dtype);
    for (const auto& [name, b] : buffers) out[name] = b;
    checkpoint::save_hf_weights(c, out, hf_dir.path().string());
    checkpoint::copy_side_files(o.source_dir, hf_dir.path(), o.dtype, c);
    hf_dir.commit();
    hf = hf_dir.target().string();
  }
  write_file_atomic((fs::path(dir_) / "latest_checkpointed_iteration.txt").string(), std::to_string(iteration_));
  log().info("saved checkpoint iteration {} to {}", iteration_, dir_);
  return hf;
}

std::string save_checkpoint(const std::string& dir, const model::ModelConfig& c, const model::StateDict& params,
                            const model::StateDict& buffers, const Optimizer& opt, const LrScheduleConfig& lr,
                            const TrainProgress& p, const CheckpointOptions& o) {
  // Each iteration dir is built beside its name and swapped in whole (core/output_dir.h); a
  // failure (a value float16 cannot hold, a full disk) leaves no partial dir behind.
  CheckpointSave save(dir, p.iteration);
  write_rank_file(save.staging() / "mp_rank_00", c, {}, params, buffers, opt, lr, p, o);
  return save.finish(c, &params, buffers, o);
}

namespace {

// One rank file's optimizer state and fp32 masters (names moved by `shift` to global ones, then to
// the model's by local_name), and, from the first file, the data position.
void load_rank_file(const fs::path& file, int64_t shift, bool first, model::TrainModel& m, Optimizer& opt,
                    bool load_optim, bool load_rng,
                    const std::function<std::optional<std::string>(const std::string&)>& local_name, ResumeState& rs) {
  if (!fs::exists(file)) throw_input("{}: missing", file.string());
  const io::TorchFile f = io::TorchFile::open(file.string());
  const auto& root = *f.root();
  if (auto od = root.get("optimizer"); od && load_optim) {
    auto names = od->get("param_names");
    auto masters = od->get("fp32_from_fp16_params");
    auto inner = od->get("optimizer");
    auto st = inner ? inner->get("state") : nullptr;
    if (!names || !masters || !st) throw_input("{}: 'optimizer' lacks moectl's param_names/state", file.string());
    if (!opt.bound()) {  // the state's layout: the model's flat order
      std::vector<ParamRef> refs;
      for (auto& [name, t] : m.params())
        refs.push_back({name, t.f32(), m.grads().at(name).f32(), size_t(t.numel()), decays(name)});
      opt.bind(in_address_order(refs));
    }
    for (size_t i = 0; i < names->items.size(); ++i) {
      const std::string global = model::names::shift_expert(names->items[i]->s, shift);
      const auto mine = local_name ? local_name(global) : std::optional<std::string>(global);
      if (!mine) continue;  // another rank's part
      const std::string& name = *mine;
      auto pit = m.params().find(name);
      if (pit == m.params().end())
        throw_input("{}: optimizer state for unknown parameter '{}'", file.string(), names->items[i]->s);
      Tensor master = f.tensor(masters->items.at(i)->tensor);
      if (master.shape() != pit->second.shape() || master.dtype() != DType::F32)
        throw_input("{}: fp32 master of '{}' has shape {}, the model {}", file.string(), name,
                    shape_str(master.shape()), shape_str(pit->second.shape()));
      std::memcpy(pit->second.raw(), master.raw(), master.nbytes());
      for (const auto& [k, v] : st->entries) {
        if (k->kind != PyValue::kInt || k->i != int64_t(i)) continue;
        for (const auto& [sk, sv] : v->entries) {
          if (sv->kind == PyValue::kTensor) {
            Tensor t = f.tensor(sv->tensor);
            // A key this optimizer does not keep (another --optimizer's) is not used by its steps.
            const auto& keys = opt.state_keys();
            if (std::find(keys.begin(), keys.end(), sk->s) == keys.end()) continue;
            const std::span<float> dst = opt.state(name, sk->s);
            MOE_ASSERT(size_t(t.numel()) == dst.size(), "{}: optimizer state {} of {} has {} values, the parameter {}",
                       file.string(), sk->s, name, t.numel(), dst.size());
            std::memcpy(dst.data(), t.data<float>(), dst.size() * sizeof(float));
          } else if (sk->s == "step" && sv->kind == PyValue::kInt) {
            opt.set_steps(sv->i);
          }
        }
      }
    }
    rs.had_optimizer = true;
  }
  if (auto r = root.get("rng_state"); first && r && load_rng && r->kind == PyValue::kList && !r->items.empty()) {
    const auto& d = *r->items[0];
    auto geti = [&](const char* k) {
      auto v = d.get(k);
      return v && v->kind == PyValue::kInt ? v->i : int64_t(0);
    };
    rs.progress.data = {geti("moectl_data_epoch"), geti("moectl_data_index"), uint64_t(geti("moectl_data_seed"))};
    rs.progress.consumed_samples = geti("moectl_consumed_samples");
    rs.progress.skipped_iters = geti("moectl_skipped_iters");
    rs.had_rng = true;
  }
}

}  // namespace

ResumeState load_training_state(const std::string& dir, model::TrainModel& m, Optimizer& opt, bool load_optim,
                                bool load_rng,
                                const std::function<std::optional<std::string>(const std::string&)>& local_name) {
  ResumeState rs;
  const int64_t iteration = checkpoint::read_checkpoint_tracker(dir);
  rs.progress.iteration = iteration;
  // The rank files: one (mp_rank_00), or one per EP rank (mp_rank_00_EEE) holding its experts
  // under EP-local indices, which `shift` turns into global ones.
  const fs::path it_dir = fs::path(dir) / iter_dir_name(iteration);
  std::vector<std::pair<fs::path, int64_t>> files;
  if (fs::exists(it_dir / "mp_rank_00" / "model_optim_rng.pt")) {
    files.push_back({it_dir / "mp_rank_00" / "model_optim_rng.pt", 0});
  } else if (fs::is_directory(it_dir)) {
    std::vector<std::string> ep_dirs;
    for (const auto& e : fs::directory_iterator(it_dir)) {
      const std::string n = e.path().filename().string();
      if (n.size() == 14 && n.rfind("mp_rank_00_", 0) == 0 &&
          n.find_first_not_of("0123456789", 11) == std::string::npos)
        ep_dirs.push_back(n);
    }
    std::sort(ep_dirs.begin(), ep_dirs.end());
    const int64_t E = m.config().num_experts, P = int64_t(ep_dirs.size());
    for (int64_t q = 0; q < P; ++q) {
      if (ep_dirs[size_t(q)] != fmt::format("mp_rank_00_{:03d}", q) || E % P != 0)
        throw_input("{}: rank dirs {} are not the EP ranks of moectl's training checkpoints", it_dir.string(),
                    ep_dirs[size_t(q)]);
      files.push_back({it_dir / ep_dirs[size_t(q)] / "model_optim_rng.pt", q * (E / P)});
    }
  }
  if (files.empty())
    throw_input(
        "{}: no mp_rank_00/ or mp_rank_00_EEE/ model_optim_rng.pt; --load resumes from checkpoints written "
        "by moectl pt/sft",
        it_dir.string());
  for (size_t fi = 0; fi < files.size(); ++fi) {
    const auto& [file, shift] = files[fi];
    load_rank_file(file, shift, fi == 0, m, opt, load_optim, load_rng, local_name, rs);
  }
  return rs;
}

}  // namespace moe::train
