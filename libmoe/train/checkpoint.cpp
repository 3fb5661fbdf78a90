#include "train/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <tuple>

#include <fmt/format.h>
#include "checkpoint/load_hf.h"
#include "checkpoint/mcore_export.h"
#include "checkpoint/mcore_reader.h"
#include "core/error.h"
#include "core/log.h"
#include "core/mapped_file.h"
#include "core/output_dir.h"
#include "io/torch_file.h"
#include "model/state_dict.h"
#include "model/weight_map.h"

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

namespace {

io::PyPtr scheduler_state(const LrScheduleConfig& lr, int64_t iteration) {
  auto sched = PyValue::container(PyValue::kDict);
  sched->set("max_lr", PyValue::floating(lr.lr)), sched->set("min_lr", PyValue::floating(lr.min_lr));
  sched->set("lr_warmup_steps", PyValue::integer(lr.warmup_iters));
  sched->set("lr_decay_steps", PyValue::integer(lr.decay_iters)), sched->set("lr_decay_style", PyValue::str(lr.style));
  sched->set("num_steps", PyValue::integer(iteration));
  return sched;
}

// A namespace entry replaced in place (Megatron reads the first of duplicate keys nowhere, but
// our reader would).
void set_arg(io::PyValue& ns, const std::string& key, io::PyPtr v) {
  for (auto& [k, x] : ns.entries)
    if (k->s == key) {
      x = std::move(v);
      return;
    }
  ns.set(key, std::move(v));
}

// --- Megatron's DistributedOptimizer parameter state in the legacy format (distrib_optim.pt)
//
// Megatron-Core builds its DDP grad buffers from named_parameters() (the GPTModel's module
// registration order), walked in reverse ("backprop order"); with the distributed optimizer each
// parameter starts at a multiple of 64 elements within its bucket; a bucket ends after a
// parameter flagged shared_embedding (the tied embedding and output copy under PP) and, with
// --overlap_grad_reduce, past --ddp_bucket_size. This file is written as Megatron lays it out
// without overlap (every buffer one bucket apart from the shared embedding), whatever moectl's own
// buckets were; a Megatron run with overlap splits its buffers differently and would refuse it
// (per_bucket_numel_unpadded). get_parameter_state_dp_zero
// gathers each bucket over DP and concatenates the buckets with their end padding dropped (the
// 64-element alignment gaps inside a bucket stay, as zeros). The vectors so do not depend on the
// DP size, and a rank's file lists its parameters by its own (stage-local, EP-local) names.
// Deviation: the vocabulary's padding rows (parameters in Megatron, absent from moectl's model)
// hold zeros in every vector, as they do in model_optim_rng.pt's weights.

// Where a parameter's module comes in GPTModel's registration order: embedding, the layers
// (attention: linear_proj, then the fused-norm linear_qkv, then the q/k norms; then the MLP:
// router, experts fc1 then fc2, shared experts' gate then fc1 then fc2), final norm, output.
std::tuple<int, int, int, int64_t> module_order(const std::string& name) {
  namespace n = model::names;
  if (name == n::kEmbedding) return {0, 0, 0, 0};
  if (name == n::kFinalNorm) return {2, 0, 0, 0};
  if (name == n::kOutput) return {3, 0, 0, 0};
  const int layer = n::layer_index(name);
  if (layer >= 0) {
    std::string within = name.substr(n::layer(layer).size());
    const int64_t e = n::expert_index(name);
    if (e >= 0) within.resize(within.find_last_not_of("0123456789") + 1);
    static const std::vector<std::string> order = {n::kProj,
                                                   n::kInputNorm,
                                                   n::kQkv,
                                                   n::kQkvBias,
                                                   n::kQNorm,
                                                   n::kKNorm,
                                                   n::kPreMlpNorm,
                                                   n::kDenseNorm,
                                                   n::kDenseFc1,
                                                   n::kDenseFc2,
                                                   n::kRouter,
                                                   "mlp.experts.linear_fc1.weight",
                                                   "mlp.experts.linear_fc2.weight",
                                                   n::kSharedGate,
                                                   n::kSharedFc1,
                                                   n::kSharedFc2};
    const auto it = std::find(order.begin(), order.end(), within);
    if (it != order.end()) return {1, layer, int(it - order.begin()), std::max<int64_t>(e, 0)};
  }
  throw_internal("'{}': no place in Megatron's module order", name);
}

struct FlatParam {
  std::string name;    // as the rank file names it
  Shape shape;         // as the rank file holds it (vocabulary rows padded)
  std::string source;  // writing: the parameter's name in the model and its optimizer
  int64_t offset = 0;
};

// `params` in module order -> in buffer order with their offsets in the coalesced vectors;
// returns the vectors' length (Megatron's numel_unpadded).
int64_t grad_buffer_layout(std::vector<FlatParam>& params, const std::set<std::string>& shared_embedding) {
  std::reverse(params.begin(), params.end());
  constexpr int64_t kAlign = 64;  // Megatron's pad_param_start
  int64_t base = 0, pos = 0;      // the bucket's start in the vectors; the next start within it
  bool open = false;              // the bucket holds a parameter
  for (auto& p : params) {
    pos = (pos + kAlign - 1) / kAlign * kAlign;
    const bool shared = shared_embedding.count(p.name) > 0;
    if (shared && open) base += pos, pos = 0, open = false;  // the shared tensor gets a bucket of its own
    p.offset = base + pos;
    pos += shape_numel(p.shape), open = true;
    if (shared) base += pos, pos = 0, open = false;
  }
  return base + (open ? pos : 0);
}

std::vector<FlatParam> in_module_order(std::vector<FlatParam> params) {
  std::stable_sort(params.begin(), params.end(),
                   [](const FlatParam& a, const FlatParam& b) { return module_order(a.name) < module_order(b.name); });
  return params;
}

// Megatron's param groups of one optimizer (torch's param_groups without 'params'): one per
// weight-decay multiplier, in the order the module order first meets them, with the step.
// Deviations: moectl's own decay rule (decays(): norms and biases exempt) stands for Megatron's
// (1-D tensors and biases), the same for GPT models; `lr` is the peak learning rate (Megatron's
// scheduler sets every group's lr before each step); of torch's and FusedAdam's per-group
// options only those Adam reads are written.
io::PyPtr dist_param_groups(const std::vector<FlatParam>& members, bool experts, const OptimizerConfig& oc,
                            const LrScheduleConfig& lr, int64_t steps) {
  auto groups = PyValue::container(PyValue::kList);
  std::vector<bool> seen;
  for (const auto& p : members) {
    const bool decay = decays(p.name);
    if (std::find(seen.begin(), seen.end(), decay) != seen.end()) continue;
    seen.push_back(decay);
    auto g = PyValue::container(PyValue::kDict);
    g->set("wd_mult", PyValue::floating(decay ? 1.0 : 0.0)), g->set("lr_mult", PyValue::floating(1.0));
    g->set("is_expert_parallel", PyValue::boolean(experts)), g->set("is_decoupled_lr", PyValue::boolean(false));
    g->set("max_lr", PyValue::floating(lr.lr)), g->set("min_lr", PyValue::floating(lr.min_lr));
    g->set("lr", PyValue::floating(lr.lr));
    g->set("weight_decay", PyValue::floating(decay ? oc.weight_decay : 0.0));
    g->set("betas", PyValue::tuple({PyValue::floating(oc.beta1), PyValue::floating(oc.beta2)}));
    g->set("eps", PyValue::floating(oc.eps)), g->set("amsgrad", PyValue::boolean(false));
    g->set("bias_correction", PyValue::boolean(true));  // TE's and apex's FusedAdam read it from the group
    g->set("step", PyValue::integer(steps));
    groups->items.push_back(g);
  }
  return groups;
}

// Writes distrib_optim.pt into `rank_dir` and returns what model_optim_rng.pt's 'optimizer'
// holds beside it (DistributedOptimizer.state_dict: param groups only; a list of two when the
// dense and expert optimizers are chained). `file_params`: the rank file's parameters under its
// names and stored shapes, each with its source in `params` (the fp32 masters) and `opt`.
io::PyPtr write_distrib_optim(const fs::path& rank_dir, const std::vector<FlatParam>& file_params,
                              const model::StateDict& params, const dist::ParallelLayout& layout, bool write_dense,
                              const Optimizer& opt, const LrScheduleConfig& lr, DType param_dtype, int64_t iteration) {
  // Megatron chains a dense and an expert optimizer when experts are expert-parallel (EP > 1:
  // their parameters have allreduce=False and buffers of their own); with EP 1 the experts sit in
  // the one optimizer's buffer. Only DP rank 0 of each optimizer's group saves its state: under
  // EP > 1 the dense group's rank 0 writes the EP-rank-0 dir, the other dirs get None there.
  std::vector<FlatParam> dense, experts;
  for (const auto& p : file_params)
    (layout.ep > 1 && model::names::expert_index(p.name) >= 0 ? experts : dense).push_back(p);
  const bool chained = !experts.empty();
  std::set<std::string> shared;
  if (layout.pp > 1)  // Megatron marks shared_embedding only across stages
    for (const auto& p : file_params)
      if (p.name == model::names::kEmbedding || p.name == model::names::kOutput) shared.insert(p.name);

  std::vector<std::string> keys = {"param"};
  for (const auto& k : opt.state_keys()) keys.push_back(k);
  struct Buffer {
    std::vector<FlatParam> params;  // buffer order, with offsets
    int64_t numel = 0;
  };
  std::vector<Buffer> buffers;
  auto distrib = chained ? PyValue::container(PyValue::kList) : nullptr;
  io::PyPtr single;
  auto state_dicts = PyValue::container(PyValue::kList);
  std::vector<std::pair<std::string, std::pair<size_t, std::string>>> storages;  // key -> (buffer, state key)
  for (int which = 0; which < (chained ? 2 : 1); ++which) {
    std::vector<FlatParam> members = in_module_order(which == 0 ? dense : experts);
    auto sd = PyValue::container(PyValue::kDict);
    auto inner = PyValue::container(PyValue::kDict);
    inner->set("param_groups", dist_param_groups(members, which == 1, opt.config(), lr, opt.steps()));
    sd->set("optimizer", inner);
    state_dicts->items.push_back(sd);
    if (which == 0 && !write_dense) {
      distrib->items.push_back(PyValue::none());
      continue;
    }
    Buffer b;
    b.params = std::move(members);
    b.numel = grad_buffer_layout(b.params, shared);
    auto world = PyValue::container(PyValue::kDict);
    for (const auto& k : keys) {
      const std::string key = std::to_string(storages.size());
      storages.push_back({key, {buffers.size(), k}});
      world->set(k, PyValue::tensor_ref(io::contiguous_ref(key, DType::F32, {b.numel})));
    }
    world->set("numel_unpadded", PyValue::integer(b.numel));
    auto by_dtype = PyValue::container(PyValue::kDict);
    const auto dtype_key = PyValue::tuple(
        {PyValue::global("torch." + std::string(torch_dtype_name(param_dtype))), PyValue::global("torch.float32")});
    by_dtype->entries.push_back({dtype_key, world});
    auto st = PyValue::container(PyValue::kDict);
    st->set("buckets_coalesced", PyValue::boolean(true));
    st->entries.push_back({PyValue::integer(0), by_dtype});
    if (chained) distrib->items.push_back(st);
    else single = st;
    buffers.push_back(std::move(b));
  }
  io::TorchFileWriter w((rank_dir / "distrib_optim.pt").string(), chained ? *distrib : *single);
  for (const auto& [key, what] : storages) {
    const Buffer& b = buffers[what.first];
    const std::string& k = what.second;
    w.add_storage_streamed(key, size_t(b.numel) * sizeof(float), [&](io::TorchFileWriter::Sink& sink) {
      std::vector<float> zeros;
      int64_t at = 0;
      auto gap = [&](int64_t to) {
        if (to <= at) return;
        zeros.assign(size_t(to - at), 0.0f);
        sink.write(zeros.data(), zeros.size() * sizeof(float)), at = to;
      };
      // Buffer order is offset order.
      for (const auto& p : b.params) {
        gap(p.offset);
        const std::string& name = p.source;
        const Tensor& t = params.at(name);
        MOE_ASSERT(t.numel() <= shape_numel(p.shape), "{}: {} values, {} in the file", name, t.numel(),
                   shape_numel(p.shape));
        Tensor v;
        if (k == "param") {
          v = t.dtype() == DType::F32 ? t : t.to(DType::F32);
        } else if (opt.has_state()) {
          const auto s = opt.state(name, k);
          MOE_ASSERT(s.size() == size_t(t.numel()), "{}: optimizer state {} has {} values", name, k, s.size());
          v = borrow_f32(s, t.shape());
        } else {
          v = Tensor(t.shape(), DType::F32);  // before the first step: Adam's zero moments
          std::memset(v.raw(), 0, v.nbytes());
        }
        check_finite(v, k == "param" ? name : fmt::format("{} {}", name, k), iteration);
        sink.write(v.raw(), v.nbytes()), at += t.numel();
        gap(p.offset + shape_numel(p.shape));  // a vocabulary's padding rows
      }
      gap(b.numel);
    });
  }
  w.finish();
  return chained ? state_dicts : state_dicts->items[0];
}
}  // namespace

CheckpointSave::CheckpointSave(const std::string& dir, int64_t iteration)
    : dir_(dir), iteration_(iteration), staged_("--save", fs::path(dir) / iter_dir_name(iteration), true) {}

void write_rank_file(const fs::path& rank_dir, const model::ModelConfig& c, const dist::ParallelLayout& layout,
                     const model::StateDict& params, const model::StateDict& buffers, const Optimizer& opt,
                     const LrScheduleConfig& lr, const TrainProgress& p, const CheckpointOptions& o, int layer_offset) {
  checkpoint::ExportOptions eo;
  eo.dtype = o.dtype, eo.layout = layout;
  auto file_name = [&](const std::string& n) { return model::names::shift_layer(n, -layer_offset); };
  const model::ShardSpec spec(c, eo.layout, eo.make_vocab_size_divisible_by);
  const int64_t Vp = spec.padded_vocab() / layout.tp;  // a TP rank's rows (its slices are padded already)
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
    model_dict->set(file_name(name), add(w));
  }
  for (const auto& [name, b] : buffers) {  // the expert bias, fp32 as Megatron keeps it
    check_finite(b, name, p.iteration);
    model_dict->set(file_name(name), add(b));
  }
  // The TE extra states of the layers this file holds (the whole model's, or a stage's).
  std::set<int> file_layers;
  for (const auto& [name, t] : params)
    if (const int l = model::names::layer_index(name); l >= 0) file_layers.insert(l);
  if (layout.pp == 1)
    for (int l = 0; l < c.num_layers; ++l) file_layers.insert(l);
  for (int l : file_layers)
    for (const auto& e : checkpoint::te_extra_states(c, l)) model_dict->set(file_name(e), PyValue::none());
  if (params.count(model::names::kOutput)) model_dict->set("output_layer._extra_state", PyValue::none());
  auto root = PyValue::container(PyValue::kDict);
  auto args = checkpoint::megatron_args(c, eo, spec);
  set_arg(*args, "use_distributed_optimizer", PyValue::boolean(o.distributed_optimizer));
  root->set("args", args);
  root->set("checkpoint_version", PyValue::floating(3.0));
  root->set("iteration", PyValue::integer(p.iteration));
  root->set("model", model_dict);
  if (o.save_optim && o.distributed_optimizer) {
    // Megatron's DistributedOptimizer: the parameter state in distrib_optim.pt beside this file
    // (get_parameter_state_dp_zero), only the param groups and the step here.
    std::vector<FlatParam> file_params;
    for (const auto& [name, t] : params) {
      Shape stored = t.shape();
      if (is_vocab(name)) stored[0] = Vp;
      file_params.push_back({file_name(name), stored, name});
    }
    // The file's ranks from its dir's name (mp_rank_TT[_PPP][_EEE]). Its dense state goes into the
    // rank file ShardSpec::merge reads the dense slices from (the first of its TP and PP ranks: EP
    // rank 0, or under MoE parallel folding the EP rank its TP rank's processes have); the other
    // files get None there, as Megatron's non-zero DP ranks of the dense optimizer.
    const std::string d = rank_dir.filename().string();
    std::vector<int> num;
    for (size_t at = d.find('_', 3); at != std::string::npos; at = d.find('_', at + 1))
      num.push_back(std::stoi(d.substr(at + 1)));
    const int file_tp = num.at(0), file_pp = layout.pp > 1 ? num.at(1) : 0, file_ep = layout.ep > 1 ? num.back() : 0;
    bool write_dense = false;
    for (const auto& r : spec.rank_files())
      if (r.tp == file_tp && r.pp == file_pp) {
        write_dense = r.ep == file_ep;
        break;
      }
    root->set("optimizer",
              write_distrib_optim(rank_dir, file_params, params, layout, write_dense, opt, lr, o.dtype, p.iteration));
    root->set("opt_param_scheduler", scheduler_state(lr, p.iteration));
  } else if (o.save_optim) {
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
      names->items.push_back(PyValue::str(file_name(name))), index->items.push_back(PyValue::integer(i));
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
    root->set("opt_param_scheduler", scheduler_state(lr, p.iteration));
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

void write_dist_rank(const fs::path& iter_dir, int rank, int ep_rank, int ep_size, const model::ModelConfig& c,
                     const dist::ParallelLayout& layout, const model::StateDict& params,
                     const model::StateDict& buffers, const Optimizer& opt, const LrScheduleConfig& lr,
                     const TrainProgress& p, const CheckpointOptions& o) {
  checkpoint::ExportOptions eo;
  eo.dtype = o.dtype, eo.layout = layout, eo.format = checkpoint::CkptFormat::kTorchDist;
  const model::ShardSpec spec(c, eo.layout, eo.make_vocab_size_divisible_by);
  const int64_t Vp = spec.padded_vocab();
  const int64_t shift = c.num_experts > 0 ? int64_t(ep_rank) * (c.num_experts / std::max(ep_size, 1)) : 0;
  fs::create_directories(iter_dir);
  struct Member {
    std::vector<int64_t> index;
    const std::string* name;
    const Tensor* t;
  };
  struct Group {
    Shape global;
    std::vector<Member> members;
    bool buffer;
  };
  std::vector<std::string> order;
  std::map<std::string, Group> groups;
  auto add = [&](const model::StateDict& sd, bool buffer) {
    for (const auto& [name, t] : sd) {
      const bool expert = model::names::expert_index(name) >= 0;
      if (!expert && ep_rank != 0) continue;  // dense tensors: EP rank 0 writes them
      Shape stored = t.shape();
      if (is_vocab(name)) stored[0] = Vp;
      const auto k = checkpoint::dist_key(c, model::names::shift_expert(name, shift), stored);
      auto [it, fresh] = groups.try_emplace(k.fqn, Group{k.global, {}, buffer});
      if (fresh) order.push_back(k.fqn);
      it->second.members.push_back({k.index, &name, &t});
    }
  };
  add(params, false), add(buffers, true);
  std::vector<checkpoint::DistChunk> chunks;
  // The chunk of `fqn` this rank holds: the box its members' indices span (they fill it), in
  // index order; `bytes(member)` gives each member's tensor, padded to the stored shape.
  auto chunk = [&](const std::string& fqn, const Group& g, DType dtype,
                   const std::function<Tensor(const Member&)>& bytes) {
    checkpoint::DistChunk ch;
    ch.fqn = fqn, ch.global = g.global, ch.dtype = dtype;
    const size_t lead = g.members[0].index.size();
    ch.offsets.assign(g.global.size(), 0), ch.sizes = g.global;
    int64_t count = 1;
    for (size_t d = 0; d < lead; ++d) {
      int64_t lo = g.members[0].index[d], hi = lo;
      for (const auto& m : g.members) lo = std::min(lo, m.index[d]), hi = std::max(hi, m.index[d]);
      ch.offsets[d] = lo, ch.sizes[d] = hi - lo + 1, count *= hi - lo + 1;
    }
    MOE_ASSERT(count == int64_t(g.members.size()), "{}: this rank's {} tensors do not fill a box", fqn,
               g.members.size());
    const auto* members = &g.members;
    ch.fill = [members, bytes](io::TorchFileWriter::Sink& sink) {
      for (const auto& m : *members) {
        const Tensor t = bytes(m);
        sink.write(t.raw(), t.nbytes());
      }
    };
    chunks.push_back(std::move(ch));
  };
  auto padded = [&](const std::string& name, Tensor w) {
    if (!is_vocab(name) || Vp == w.dim(0)) return w;
    Tensor out({Vp, w.dim(1)}, w.dtype());
    std::memcpy(out.raw(), w.raw(), w.nbytes());
    return out;
  };
  for (auto& [fqn, g] : groups)
    std::sort(g.members.begin(), g.members.end(), [](const Member& a, const Member& b) { return a.index < b.index; });
  for (const auto& fqn : order) {
    const Group& g = groups.at(fqn);
    const DType dt = g.buffer ? DType::F32 : o.dtype;
    chunk(fqn, g, dt, [&, dt](const Member& m) {
      check_finite(*m.t, *m.name, p.iteration);
      Tensor w = m.t->dtype() == dt ? *m.t : m.t->to(dt);
      check_finite(w, *m.name, p.iteration);
      return padded(*m.name, w);
    });
    if (!o.save_optim || g.buffer) continue;
    // Megatron's distributed optimizer in torch_dist (fully sharded, model space): the fp32
    // master and each moment under the parameter's own key and global shape.
    chunk("optimizer.state.fp32_param." + fqn, g, DType::F32,
          [&](const Member& m) { return padded(*m.name, m.t->to(DType::F32)); });
    if (!opt.has_state()) continue;
    for (const auto& k : opt.state_keys())
      chunk(fmt::format("optimizer.state.{}.{}", k, fqn), g, DType::F32, [&, k](const Member& m) {
        const auto v = opt.state(*m.name, k);
        MOE_ASSERT(v.size() == size_t(m.t->numel()), "{}: optimizer state {} has {} values", *m.name, k, v.size());
        const Tensor sv = borrow_f32(v, m.t->shape());
        check_finite(sv, fmt::format("{} {}", *m.name, k), p.iteration);
        return padded(*m.name, sv);
      });
  }
  std::vector<checkpoint::DistObject> objects;
  if (rank == 0) {
    const auto extra = checkpoint::empty_extra_state();
    for (const auto& k : checkpoint::dist_extra_state_keys(c)) objects.push_back({k, extra});
  }
  const auto records = checkpoint::write_dist_files(iter_dir, rank, o.thread_count, std::move(chunks), objects);
  checkpoint::write_dist_records(iter_dir, rank, records);
  if (rank != 0) return;
  auto root = PyValue::container(PyValue::kDict);
  auto args = checkpoint::megatron_args(c, eo, spec);
  set_arg(*args, "no_save_optim", PyValue::boolean(!o.save_optim));
  set_arg(*args, "no_save_rng", PyValue::boolean(true));  // moectl's data position is in common.pt
  root->set("args", args);
  root->set("checkpoint_version", PyValue::floating(3.0));
  root->set("iteration", PyValue::integer(p.iteration));
  root->set("num_floating_point_operations_so_far", PyValue::integer(0));
  auto content = PyValue::container(PyValue::kDict);
  content->set("singleton_local_shards", PyValue::boolean(false));
  content->set("chained_optim_avoid_prefix", PyValue::boolean(true));
  if (o.save_optim) content->set("distrib_optim_sharding_type", PyValue::str("fully_sharded_model_space"));
  root->set("content_metadata", content);
  if (o.save_optim) {
    const auto& oc = opt.config();
    auto group = PyValue::container(PyValue::kDict);
    group->set("lr", PyValue::floating(lr.lr)), group->set("weight_decay", PyValue::floating(oc.weight_decay));
    group->set("betas", PyValue::tuple({PyValue::floating(oc.beta1), PyValue::floating(oc.beta2)}));
    group->set("eps", PyValue::floating(oc.eps)), group->set("step", PyValue::integer(opt.steps()));
    auto groups_list = PyValue::container(PyValue::kList);
    groups_list->items.push_back(group);
    auto od = PyValue::container(PyValue::kDict);
    od->set("param_groups", groups_list), od->set("step", PyValue::integer(opt.steps()));
    od->set("optimizer_type", PyValue::str(oc.type));
    root->set("optimizer", od);
    root->set("opt_param_scheduler", scheduler_state(lr, p.iteration));
  }
  if (o.save_rng) {
    auto r = PyValue::container(PyValue::kDict);
    r->set("data_epoch", PyValue::integer(p.data.epoch));
    r->set("data_index", PyValue::integer(p.data.index));
    r->set("data_seed", PyValue::integer(int64_t(p.data.seed)));
    r->set("consumed_samples", PyValue::integer(p.consumed_samples));
    r->set("skipped_iters", PyValue::integer(p.skipped_iters));
    root->set("moectl_progress", r);
  }
  io::write_torch_file((iter_dir / "common.pt").string(), *root, {});
}

std::string CheckpointSave::finish(const model::ModelConfig& c, const model::StateDict* hf_params,
                                   const model::StateDict& buffers, const CheckpointOptions& o) {
  if (o.format == checkpoint::CkptFormat::kTorchDist)  // every rank's chunks are written: the coordinator's part
    checkpoint::finish_dist_checkpoint(staged_.path(), checkpoint::read_dist_records(staged_.path()));
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
  if (o.format == checkpoint::CkptFormat::kTorchDist)
    write_dist_rank(save.staging(), 0, 0, 1, c, {}, params, buffers, opt, lr, p, o);
  else write_rank_file(save.staging() / "mp_rank_00", c, {}, params, buffers, opt, lr, p, o);
  return save.finish(c, &params, buffers, o);
}

namespace {

// One rank file's optimizer state and fp32 masters (names moved by `shift` to global ones, then to
// the model's by local_name), and, from the first file, the data position.
// A checkpoint's tensor of `name` as the model holds it: this rank's slice when it is whole.
Tensor as_local(const ToLocal& to_local, const std::string& name, const Tensor& t, const Shape& model_shape) {
  if (!to_local || t.shape() == model_shape || shape_numel(t.shape()) <= shape_numel(model_shape)) return t;
  return to_local(name, t);
}

void bind_to_model(model::TrainModel& m, Optimizer& opt) {
  if (opt.bound()) return;
  std::vector<ParamRef> refs;  // the state's layout: the model's flat order
  for (auto& [name, t] : m.params())
    refs.push_back({name, t.f32(), m.grads().at(name).f32(), size_t(t.numel()), decays(name)});
  opt.bind(in_address_order(refs));
}

// A rank file's parameter state: local name -> key ("param" or a state key) -> fp32 tensor in
// the file's stored shape (vocabulary rows padded to the TP rank's part of the padded vocabulary).
using RankOptState = std::map<std::string, std::map<std::string, Tensor>>;

// distrib_optim.pt beside `file`, un-flattened by the layout the writer used (grad_buffer_layout
// over the file's parameters, the embedding and output in buckets of their own under PP), into
// `out`; `keep` holds the opened file. Returns whether it held the dense optimizer's state.
bool unflatten_distrib_optim(const fs::path& file, const PyValue& root, const PyValue& od, bool pipeline,
                             Optimizer& opt, RankOptState& out, std::vector<std::shared_ptr<io::TorchFile>>& keep) {
  const fs::path dpath = file.parent_path() / "distrib_optim.pt";
  if (!fs::exists(dpath))
    throw_input(
        "{}: missing; the checkpoint was saved with --use_distributed_optimizer and keeps its optimizer state there "
        "(resume with --no_load_optim true to start a fresh optimizer)",
        dpath.string());
  auto d = std::make_shared<io::TorchFile>(
      io::TorchFile::open(dpath.string(), {"torch.bfloat16", "torch.float16", "torch.float32", "torch.float64"}));
  keep.push_back(d);
  const bool chained = d->root()->kind == PyValue::kList;
  const size_t n_opt = chained ? d->root()->items.size() : 1;
  if ((chained && n_opt != 2) || (od.kind == PyValue::kList) != chained)
    throw_input("{}: {} optimizer states, {} in model_optim_rng.pt", dpath.string(), n_opt,
                od.kind == PyValue::kList ? od.items.size() : 1);
  for (size_t i = 0; i < n_opt; ++i) {  // the step, from any param group
    const PyValue& sd = chained ? *od.items[i] : od;
    auto inner = sd.get("optimizer");
    auto groups = inner ? inner->get("param_groups") : nullptr;
    if (groups && !groups->items.empty())
      if (auto st = groups->items[0]->get("step"); st && st->kind == PyValue::kInt) opt.set_steps(st->i);
  }
  auto model = root.get("model");
  if (!model) throw_input("{}: no 'model'", file.string());
  std::vector<FlatParam> dense, experts;
  std::set<std::string> shared;
  for (const auto& [k, v] : model->entries) {
    if (v->kind != PyValue::kTensor || k->s.ends_with(model::names::kExpertBias)) continue;  // extra states, buffers
    (chained && model::names::expert_index(k->s) >= 0 ? experts : dense).push_back({k->s, v->tensor.shape, "", 0});
    if (pipeline && is_vocab(k->s)) shared.insert(k->s);
  }
  bool dense_found = false;
  for (size_t i = 0; i < n_opt; ++i) {
    const PyValue& st = chained ? *d->root()->items[i] : *d->root();
    if (st.kind == PyValue::kNone) continue;  // another rank's file holds it
    auto bad = [&](const std::string& what) {
      throw_input("{}: not a DistributedOptimizer parameter state moectl reads: {}", dpath.string(), what);
    };
    const PyValue* gbuf = nullptr;
    for (const auto& [k, v] : st.entries)
      if (k->kind == PyValue::kInt) {
        if (k->i != 0 || gbuf) bad("more than one grad buffer");
        gbuf = v.get();
      }
    if (!gbuf || gbuf->entries.size() != 1) bad("no grad buffer of one dtype");
    const PyValue& world = *gbuf->entries[0].second;
    std::vector<FlatParam> params = in_module_order(i == 0 ? dense : experts);
    const int64_t numel = grad_buffer_layout(params, shared);
    auto nu = world.get("numel_unpadded");
    if (!nu || nu->kind != PyValue::kInt || nu->i != numel)
      throw_input("{}: numel_unpadded {} of optimizer {}, the parameters of {} make {}", dpath.string(),
                  nu && nu->kind == PyValue::kInt ? nu->i : -1, i, file.string(), numel);
    std::vector<std::string> keys = {"param"};
    for (const auto& k : opt.state_keys()) keys.push_back(k);
    for (const auto& key : keys) {
      auto v = world.get(key);
      if (!v) {
        if (key == "param") bad("no 'param'");
        continue;
      }
      if (v->kind != PyValue::kTensor) bad("'" + key + "' is not a tensor");
      const Tensor flat = d->tensor(v->tensor);
      if (flat.dtype() != DType::F32 || flat.numel() != numel)
        bad("'" + key + "' is not fp32 of numel_unpadded values");
      for (const auto& p : params)
        out[p.name][key] = Tensor::borrow(p.shape, DType::F32, flat.data<float>() + p.offset, nullptr);
    }
    if (i == 0) dense_found = true;
  }
  return dense_found;
}

// The optimizer state of a rank file saved with the distributed optimizer: the step from its
// param groups, the fp32 masters and moments from distrib_optim.pt beside it (un-flattened as
// unflatten_distrib_optim does), each parameter's part cut for this rank. Sets *dense_found when
// the file holds the dense (or only) optimizer's state.
void load_distrib_optim(const fs::path& file, const PyValue& root, const PyValue& od, int64_t shift,
                        model::TrainModel& m, Optimizer& opt,
                        const std::function<std::optional<std::string>(const std::string&)>& local_name,
                        const ToLocal& to_local, bool* dense_found) {
  RankOptState state;
  std::vector<std::shared_ptr<io::TorchFile>> keep;
  if (unflatten_distrib_optim(file, root, od, false, opt, state, keep)) *dense_found = true;
  bind_to_model(m, opt);
  for (const auto& [name, keys] : state) {
    const std::string global = model::names::shift_expert(name, shift);
    const auto mine = local_name ? local_name(global) : std::optional<std::string>(global);
    if (!mine) continue;  // another rank's part
    auto pit = m.params().find(*mine);
    if (pit == m.params().end())
      throw_input("{}: optimizer state for unknown parameter '{}'", file.parent_path().string(), name);
    const Tensor& w = pit->second;
    for (const auto& [key, whole] : keys) {
      Tensor t = whole;
      if (is_vocab(*mine) && t.ndim() > 0 && t.dim(0) > m.config().vocab_size)
        t = t.slice_rows(0, m.config().vocab_size);  // the padding rows
      t = as_local(to_local, *mine, t, w.shape());   // a TP rank's slice of a whole tensor
      if (t.shape() != w.shape())
        throw_input("{}: '{}' has shape {}, the model {}", (file.parent_path() / "distrib_optim.pt").string(), name,
                    shape_str(t.shape()), shape_str(w.shape()));
      const std::span<float> dst =
          key == "param" ? std::span<float>(pit->second.f32(), size_t(w.numel())) : opt.state(*mine, key);
      std::memcpy(dst.data(), t.raw(), dst.size() * sizeof(float));
    }
  }
}

// The data position a rank file's rng_state holds (moectl's own entries).
void read_rank_rng(const PyValue& root, bool load_rng, ResumeState& rs) {
  auto r = root.get("rng_state");
  if (!r || !load_rng || r->kind != PyValue::kList || r->items.empty()) return;
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

void load_rank_file(const fs::path& file, int64_t shift, bool first, model::TrainModel& m, Optimizer& opt,
                    bool load_optim, bool load_rng,
                    const std::function<std::optional<std::string>(const std::string&)>& local_name,
                    const ToLocal& to_local, ResumeState& rs, bool* dense_found) {
  if (!fs::exists(file)) throw_input("{}: missing", file.string());
  const io::TorchFile f = io::TorchFile::open(file.string());
  const auto& root = *f.root();
  auto od = root.get("optimizer");
  if (od && load_optim && (od->kind == PyValue::kList || (od->get("optimizer") && !od->get("param_names")))) {
    load_distrib_optim(file, root, *od, shift, m, opt, local_name, to_local,
                       dense_found);  // Megatron's DistributedOptimizer
    rs.had_optimizer = true;
  } else if (od && load_optim) {
    auto names = od->get("param_names");
    auto masters = od->get("fp32_from_fp16_params");
    auto inner = od->get("optimizer");
    auto st = inner ? inner->get("state") : nullptr;
    if (!names || !masters || !st) throw_input("{}: 'optimizer' lacks moectl's param_names/state", file.string());
    *dense_found = true;
    bind_to_model(m, opt);
    for (size_t i = 0; i < names->items.size(); ++i) {
      const std::string global = model::names::shift_expert(names->items[i]->s, shift);
      const auto mine = local_name ? local_name(global) : std::optional<std::string>(global);
      if (!mine) continue;  // another rank's part
      const std::string& name = *mine;
      auto pit = m.params().find(name);
      if (pit == m.params().end())
        throw_input("{}: optimizer state for unknown parameter '{}'", file.string(), names->items[i]->s);
      Tensor master = as_local(to_local, name, f.tensor(masters->items.at(i)->tensor), pit->second.shape());
      if (master.shape() != pit->second.shape() || master.dtype() != DType::F32)
        throw_input("{}: fp32 master of '{}' has shape {}, the model {}", file.string(), name,
                    shape_str(master.shape()), shape_str(pit->second.shape()));
      std::memcpy(pit->second.raw(), master.raw(), master.nbytes());
      for (const auto& [k, v] : st->entries) {
        if (k->kind != PyValue::kInt || k->i != int64_t(i)) continue;
        for (const auto& [sk, sv] : v->entries) {
          if (sv->kind == PyValue::kTensor) {
            Tensor t = as_local(to_local, name, f.tensor(sv->tensor), pit->second.shape());
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
  if (first) read_rank_rng(root, load_rng, rs);
}

// --- Resuming a legacy checkpoint saved under TP or PP: every rank file's optimizer state
// (fp32 masters under "param", then the moments) by the file's own names, merged into global
// tensors by the saved layout's ShardSpec, then cut to this rank's part as a torch_dist resume does.

// Pads a vocabulary tensor's rows with zeros to `rows` (the stored shape); others unchanged.
Tensor pad_vocab_rows(const std::string& local, const Tensor& t, int64_t rows) {
  if (!is_vocab(local) || t.dim(0) >= rows) return t;
  Tensor out({rows, t.dim(1)}, t.dtype());
  std::memset(out.raw(), 0, out.nbytes());
  std::memcpy(out.raw(), t.raw(), t.nbytes());
  return out;
}

// The inline optimizer state of a rank file (torch's state_dict with moectl's fp32 masters and
// parameter names) into `out`, vocabulary tensors padded to `vocab_rows`.
void read_inline_optim(const io::TorchFile& f, const std::string& file, const PyValue& od, int64_t vocab_rows,
                       Optimizer& opt, RankOptState& out) {
  auto names = od.get("param_names");
  auto masters = od.get("fp32_from_fp16_params");
  auto inner = od.get("optimizer");
  auto st = inner ? inner->get("state") : nullptr;
  if (!names || !masters || !st) throw_input("{}: 'optimizer' lacks moectl's param_names/state", file);
  const auto& keys = opt.state_keys();
  for (size_t i = 0; i < names->items.size(); ++i) {
    const std::string& local = names->items[i]->s;
    const Tensor master = f.tensor(masters->items.at(i)->tensor);
    if (master.dtype() != DType::F32)
      throw_input("{}: fp32 master of '{}' is {}", file, local, dtype_name(master.dtype()));
    out[local]["param"] = pad_vocab_rows(local, master, vocab_rows);
  }
  for (const auto& [k, v] : st->entries) {
    if (k->kind != PyValue::kInt || k->i < 0 || size_t(k->i) >= names->items.size()) continue;
    const std::string& local = names->items[size_t(k->i)]->s;
    for (const auto& [sk, sv] : v->entries) {
      if (sv->kind == PyValue::kTensor) {
        // A key this optimizer does not keep (another --optimizer's) is not used by its steps.
        if (std::find(keys.begin(), keys.end(), sk->s) == keys.end()) continue;
        out[local][sk->s] = pad_vocab_rows(local, f.tensor(sv->tensor), vocab_rows);
      } else if (sk->s == "step" && sv->kind == PyValue::kInt) {
        opt.set_steps(sv->i);
      }
    }
  }
}

void load_legacy_merged(const fs::path& it_dir, const dist::ParallelLayout& saved, int divisible_by,
                        model::TrainModel& m, Optimizer& opt, bool load_optim, bool load_rng,
                        const std::function<std::optional<std::string>(const std::string&)>& local_name,
                        const ToLocal& to_local, ResumeState& rs) {
  const model::ModelConfig& c = m.config();
  const model::ShardSpec spec(c, saved, divisible_by);
  std::vector<std::shared_ptr<io::TorchFile>> keep;  // the opened files the state borrows from
  std::map<std::string, RankOptState> state;         // rank dir -> its parameter state
  bool first = true, dense_found = false;
  for (const auto& rf : spec.rank_files()) {
    const std::string rd = spec.rank_dir(rf.tp, rf.pp, rf.ep);
    const fs::path file = it_dir / rd / "model_optim_rng.pt";
    if (!fs::exists(file))
      throw_input("{}: missing (args.json says TP={} PP={} EP={} ETP={})", file.string(), saved.tp, saved.pp, saved.ep,
                  saved.etp);
    auto f = std::make_shared<io::TorchFile>(io::TorchFile::open(file.string()));
    keep.push_back(f);
    const PyValue& root = *f->root();
    if (first) read_rank_rng(root, load_rng, rs);
    first = false;
    auto od = root.get("optimizer");
    if (!od || !load_optim) continue;
    RankOptState& mine = state[rd];
    if (od->kind == PyValue::kList || (od->get("optimizer") && !od->get("param_names"))) {
      dense_found |= unflatten_distrib_optim(file, root, *od, saved.pp > 1, opt, mine, keep);
    } else {
      read_inline_optim(*f, file.string(), *od, spec.padded_vocab() / saved.tp, opt, mine);
      dense_found = true;
    }
    rs.had_optimizer = true;
  }
  if (!rs.had_optimizer) return;
  if (!dense_found)
    throw_input("{}: no rank dir holds the dense parameters' optimizer state (distrib_optim.pt of EP rank 0)",
                it_dir.string());
  bind_to_model(m, opt);
  std::vector<std::string> keys = {"param"};
  for (const auto& k : opt.state_keys()) keys.push_back(k);
  const model::WeightMap map = model::WeightMap::for_config(c);
  for (const auto& rule : map.rules()) {
    if (rule.buffer) continue;
    const auto mine = local_name ? local_name(rule.mcore) : std::optional<std::string>(rule.mcore);
    if (!mine) continue;  // another rank's part
    auto pit = m.params().find(*mine);
    if (pit == m.params().end()) continue;  // not trained by this model
    Shape stored = rule.shape;
    if (is_vocab(rule.mcore)) stored[0] = spec.padded_vocab();
    for (const auto& key : keys) {
      // Every piece's tensor, or none when a piece lacks the key (moments saved before the first step).
      bool complete = true;
      spec.for_each_piece(rule.mcore, [&](int tp, int pp, int ep, const std::string& local) {
        const std::string rd = spec.rank_dir(tp, pp, ep);
        const auto s = state.find(rd);
        if (s == state.end() || !s->second.count(local))
          throw_input("{}: no optimizer state for '{}'", (it_dir / rd).string(), local);
        if (!s->second.at(local).count(key)) complete = false;
      });
      if (!complete) {
        if (key == "param") throw_input("{}: no fp32 master of '{}' in its rank files", it_dir.string(), rule.mcore);
        continue;
      }
      Tensor t = spec.merge(rule.mcore, stored, DType::F32, [&](int tp, int pp, int ep, const std::string& local) {
        return state.at(spec.rank_dir(tp, pp, ep)).at(local).at(key);
      });
      if (is_vocab(rule.mcore)) t = t.slice_rows(0, c.vocab_size);
      t = as_local(to_local, *mine, t, pit->second.shape());
      if (t.shape() != pit->second.shape())
        throw_input("{}: '{}' {} has shape {} per parameter, the model {}", it_dir.string(), rule.mcore, key,
                    shape_str(t.shape()), shape_str(pit->second.shape()));
      if (key == "param") {
        std::memcpy(pit->second.raw(), t.raw(), t.nbytes());
      } else {
        const std::span<float> dst = opt.state(*mine, key);
        MOE_ASSERT(size_t(t.numel()) == dst.size(), "{} {}: {} values, the parameter {}", rule.mcore, key, t.numel(),
                   dst.size());
        std::memcpy(dst.data(), t.data<float>(), dst.size() * sizeof(float));
      }
    }
  }
}

// The same from a torch_dist checkpoint: every parameter's master and moments read as the slice
// of its key this rank holds (any layout wrote them), the step and data position from common.pt.
void load_dist_state(const fs::path& it_dir, model::TrainModel& m, Optimizer& opt, bool load_optim, bool load_rng,
                     const std::function<std::optional<std::string>(const std::string&)>& local_name,
                     const ToLocal& to_local, ResumeState& rs) {
  const checkpoint::DistReader r(it_dir);
  const auto common = r.common();
  const model::ModelConfig& c = m.config();
  if (auto od = common->get("optimizer"); od && load_optim) {
    if (!opt.bound()) {  // the state's layout: the model's flat order
      std::vector<ParamRef> refs;
      for (auto& [name, t] : m.params())
        refs.push_back({name, t.f32(), m.grads().at(name).f32(), size_t(t.numel()), decays(name)});
      opt.bind(in_address_order(refs));
    }
    const model::WeightMap map = model::WeightMap::for_config(c);
    for (const auto& rule : map.rules()) {
      if (rule.buffer) continue;
      const auto mine = local_name ? local_name(rule.mcore) : std::optional<std::string>(rule.mcore);
      if (!mine) continue;  // another rank's part
      auto pit = m.params().find(*mine);
      if (pit == m.params().end()) continue;  // not trained by this model (none today)
      const auto k = checkpoint::dist_key(c, rule.mcore, rule.shape);
      auto read = [&](const std::string& fqn) {
        Tensor t = r.read(fqn, k.index, DType::F32);
        if (is_vocab(rule.mcore)) t = t.slice_rows(0, c.vocab_size);
        t = as_local(to_local, *mine, t, pit->second.shape());
        if (t.shape() != pit->second.shape())
          throw_input("{}: '{}' has shape {} per parameter, the model {}", (it_dir / ".metadata").string(), fqn,
                      shape_str(t.shape()), shape_str(pit->second.shape()));
        return t;
      };
      const Tensor master = read("optimizer.state.fp32_param." + k.fqn);
      std::memcpy(pit->second.raw(), master.raw(), master.nbytes());
      for (const auto& key : opt.state_keys()) {
        const std::string fqn = "optimizer.state." + key + "." + k.fqn;
        if (!r.has(fqn)) continue;  // saved before the first step
        const Tensor t = read(fqn);
        const std::span<float> dst = opt.state(*mine, key);
        MOE_ASSERT(size_t(t.numel()) == dst.size(), "{}: {} values, the parameter {}", fqn, t.numel(), dst.size());
        std::memcpy(dst.data(), t.data<float>(), dst.size() * sizeof(float));
      }
    }
    if (auto st = od->get("step"); st && st->kind == PyValue::kInt) opt.set_steps(st->i);
    rs.had_optimizer = true;
  }
  if (auto d = common->get("moectl_progress"); d && load_rng) {
    auto geti = [&](const char* k) {
      auto v = d->get(k);
      return v && v->kind == PyValue::kInt ? v->i : int64_t(0);
    };
    rs.progress.data = {geti("data_epoch"), geti("data_index"), uint64_t(geti("data_seed"))};
    rs.progress.consumed_samples = geti("consumed_samples");
    rs.progress.skipped_iters = geti("skipped_iters");
    rs.had_rng = true;
  }
}

}  // namespace

ResumeState load_training_state(const std::string& dir, model::TrainModel& m, Optimizer& opt, bool load_optim,
                                bool load_rng,
                                const std::function<std::optional<std::string>(const std::string&)>& local_name,
                                const ToLocal& to_local) {
  ResumeState rs;
  const int64_t iteration = checkpoint::read_checkpoint_tracker(dir);
  rs.progress.iteration = iteration;
  // The rank files: one (mp_rank_00), or one per EP rank (mp_rank_00_EEE) holding its experts
  // under EP-local indices, which `shift` turns into global ones.
  const fs::path it_dir = fs::path(dir) / iter_dir_name(iteration);
  if (checkpoint::detect_checkpoint_format(it_dir) == checkpoint::CkptFormat::kTorchDist) {
    load_dist_state(it_dir, m, opt, load_optim, load_rng, local_name, to_local, rs);
    return rs;
  }
  std::vector<std::pair<fs::path, int64_t>> files;
  // Saved under TP or PP (the run's args.json tells: per-stage mp_rank_00_PPP dirs look like EP
  // ranks' by name): every rank file's state merged by the saved layout, then cut to this rank's.
  int divisible_by = model::kMakeVocabSizeDivisibleBy;
  if (const dist::ParallelLayout saved = checkpoint::saved_layout(fs::path(dir) / "args.json", divisible_by);
      saved.tp > 1 || saved.pp > 1) {
    load_legacy_merged(it_dir, saved, divisible_by, m, opt, load_optim, load_rng, local_name, to_local, rs);
    return rs;
  }
  if (fs::exists(it_dir / "mp_rank_01") || fs::exists(it_dir / "mp_rank_01_000"))
    throw_input(
        "{}: a legacy --ckpt_format torch checkpoint saved under tensor parallelism (mp_rank_01) without the run's "
        "args.json beside it: its layout is unknown; load its weights with --finetune true",
        it_dir.string());
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
  bool dense_found = false;
  for (size_t fi = 0; fi < files.size(); ++fi) {
    const auto& [file, shift] = files[fi];
    load_rank_file(file, shift, fi == 0, m, opt, load_optim, load_rng, local_name, to_local, rs, &dense_found);
  }
  if (rs.had_optimizer && !dense_found)
    throw_input("{}: no rank dir holds the dense parameters' optimizer state (distrib_optim.pt of EP rank 0)",
                it_dir.string());
  return rs;
}

}  // namespace moe::train
