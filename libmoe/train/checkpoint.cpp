#include "train/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

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

std::string save_checkpoint(const std::string& dir, const model::ModelConfig& c, const model::StateDict& params,
                            const model::StateDict& buffers, const Optimizer& opt, const LrScheduleConfig& lr,
                            const TrainProgress& p, const CheckpointOptions& o) {
  checkpoint::ExportOptions eo;
  eo.dtype = o.dtype;
  const model::ShardSpec spec(c, eo.layout, eo.make_vocab_size_divisible_by);
  const int64_t Vp = spec.padded_vocab();
  // Each iteration dir is built beside its name and swapped in whole (core/output_dir.h); a
  // failure (a value float16 cannot hold, a full disk) leaves no partial dir behind.
  StagedDir iter_dir("--save", fs::path(dir) / iter_dir_name(p.iteration), true);
  const fs::path tmp = iter_dir.path();
  fs::create_directories(tmp / "mp_rank_00");

  std::vector<std::pair<std::string, Tensor>> storages;
  auto add = [&](Tensor t) {
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
          check_finite(sv, name + " " + k, p.iteration);
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
  io::write_torch_file((tmp / "mp_rank_00" / "model_optim_rng.pt").string(), *root, storages);
  iter_dir.commit();
  if (!fs::exists(fs::path(dir) / "config.json")) checkpoint::copy_side_files(o.source_dir, dir, o.dtype, c);

  // The HF copy is complete before the tracker names this iteration: a kill while it is written
  // leaves the previous iteration as the latest, and a resume saves this one again whole (QA #18).
  std::string hf;
  if (o.save_safetensors) {
    StagedDir hf_dir("--save", fs::path(dir) / ("checkpoint-" + std::to_string(p.iteration)), true);
    model::StateDict out;
    for (const auto& [name, t] : params) out[name] = t.to(o.dtype);
    for (const auto& [name, b] : buffers) out[name] = b;
    checkpoint::save_hf_weights(c, out, hf_dir.path().string());
    checkpoint::copy_side_files(o.source_dir, hf_dir.path(), o.dtype, c);
    hf_dir.commit();
    hf = hf_dir.target().string();
  }
  write_file_atomic((fs::path(dir) / "latest_checkpointed_iteration.txt").string(), std::to_string(p.iteration));
  log().info("saved checkpoint iteration {} to {}", p.iteration, dir);
  return hf;
}

ResumeState load_training_state(const std::string& dir, model::TrainModel& m, Optimizer& opt, bool load_optim,
                                bool load_rng,
                                const std::function<std::optional<std::string>(const std::string&)>& local_name) {
  ResumeState rs;
  const int64_t iteration = checkpoint::read_checkpoint_tracker(dir);
  const fs::path file = fs::path(dir) / iter_dir_name(iteration) / "mp_rank_00" / "model_optim_rng.pt";
  if (!fs::exists(file))
    throw_input("{}: missing; --load resumes from single-process checkpoints written by moectl pt/sft", file.string());
  const io::TorchFile f = io::TorchFile::open(file.string());
  const auto& root = *f.root();
  rs.progress.iteration = iteration;
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
      const auto mine = local_name ? local_name(names->items[i]->s) : std::optional<std::string>(names->items[i]->s);
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
  if (auto r = root.get("rng_state"); r && load_rng && r->kind == PyValue::kList && !r->items.empty()) {
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
  return rs;
}

}  // namespace moe::train
