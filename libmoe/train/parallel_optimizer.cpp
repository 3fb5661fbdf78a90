#include "train/parallel_optimizer.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/error.h"
#include "model/state_dict.h"

namespace moe::train {

namespace {

void copy_state(const Optimizer& from, Optimizer& to, std::span<const ParamRef> refs) {
  to.set_steps(from.steps());
  if (!from.has_state()) return;
  for (const auto& key : to.state_keys())
    for (const ParamRef& p : refs) {
      const auto src = from.state(p.name, key);
      auto dst = to.state(p.name, key);
      std::copy(src.begin(), src.end(), dst.begin());
    }
}

}  // namespace

std::optional<std::string> ParallelOptimizer::local_name(const std::string& global) const {
  const int64_t e = model::names::expert_index(global);
  if (e < 0) return global;
  if (e < first_expert_ || e >= first_expert_ + local_experts_) return std::nullopt;
  return model::names::shift_expert(global, -first_expert_);
}

ParallelOptimizer::ParallelOptimizer(const OptimizerConfig& cfg, model::TrainModel& model,
                                     const dist::ProcessGroups* groups, bool distributed, CommOverlap overlap)
    : model_(model), groups_(groups), cfg_(cfg), local_(cfg), overlap_(overlap) {
  for (auto& [name, t] : model.params())
    all_.push_back({name, t.f32(), model.grads().at(name).f32(), size_t(t.numel()), decays(name)});
  all_ = in_address_order(all_);
  local_.bind(all_);
  first_expert_ = model.first_expert(), local_experts_ = model.local_experts();
  const auto flat_p = model.flat_params(), flat_g = model.flat_grads();
  const size_t split = model.expert_offset();
  dense_.params = flat_p.first(split), dense_.grads = flat_g.first(split);
  experts_.params = flat_p.subspan(split), experts_.grads = flat_g.subspan(split);
  for (const ParamRef& p : all_) (size_t(p.data - flat_p.data()) < split ? dense_ : experts_).refs.push_back(p);
  if (!groups || groups->layout().world() == 1) {  // one process: one optimizer over every parameter
    dense_.refs = all_, experts_.refs.clear();
  } else {
    const auto& l = groups->layout();
    MOE_ASSERT(l.etp == l.tp || (l.etp == 1 && model.options().sequence_parallel),
               "expert tensor parallelism {} under tensor parallelism {} needs ETP 1 and sequence parallelism", l.etp,
               l.tp);
    // The DP x CP, TP and pipeline groups span every rank. Dense gradients are summed over DP x CP
    // (each CP rank's are its tokens'), and the distributed optimizer shards over it (Megatron's
    // data-parallel group with context parallelism); the experts' group, expert-DP, folds CP in.
    world_ = &groups->dp_cp();
    if (groups->dp_cp().size() > 1) dense_.group = &groups->dp_cp();
    if (groups->edp().size() > 1) experts_.group = &groups->edp();
    if (l.tp > 1) {
      tp_ = &groups->tp();
      spec_ = std::make_unique<model::ShardSpec>(model.config(), l.stage_view(), model::kMakeVocabSizeDivisibleBy);
      // Under folding each TP rank routes its own rows: its router gradient is a part too.
      const bool routers = l.etp != l.tp;
      if (model.options().sequence_parallel)
        for (const auto& [name, t] : model.grads()) {
          const bool norm = name == model::names::kFinalNorm || name.ends_with(model::names::kInputNorm) ||
                            name.ends_with(model::names::kPreMlpNorm) || name.ends_with(model::names::kDenseNorm);
          if (norm || (routers && name.ends_with(model::names::kRouter))) sp_grads_.push_back(name);
        }
    }
    if (l.pp > 1) {
      pp_ = &groups->pp();
      if (!model.config().untie_embeddings_and_output_weights && groups->embedding().size() > 1) {
        emb_ = &groups->embedding();
        tied_name_ = model.first_stage() ? model::names::kEmbedding : model::names::kOutput;
      }
    }
  }
  distributed_ = distributed && world_ != nullptr;
  const auto counted = [this](const std::string& n) { return counted_in_norm(n); };
  overlap_.param_gather = overlap_.param_gather && distributed_;  // only what the distributed optimizer gathers
  for (Region* r : {&dense_, &experts_}) {
    for (const ParamRef& p : r->refs)
      if (counted_in_norm(p.name)) r->counted.push_back(p);
    if (r->refs.empty()) continue;
    if (distributed_ && r->group)
      r->dist_opt = std::make_unique<DistributedOptimizer>(cfg, r->params, r->grads, r->refs, *r->group, counted);
    else (r->opt = std::make_unique<Optimizer>(cfg))->bind(r->refs);
    if ((overlap_.grad_reduce || overlap_.param_gather) && r->group)
      r->buckets = std::make_unique<FlatBuckets>(r->params, r->grads, r->refs, *r->group,
                                                 r->dist_opt ? r->dist_opt->chunk() : 0, overlap_.bucket_elems);
  }
  if (!has_buckets()) return;
  const int layers = model.config().num_layers;
  for (const ParamRef& p : all_) {
    int part = model::names::layer_index(p.name);
    if (part < 0)
      part = p.name == model::names::kEmbedding ? model::TrainModel::kEmbeddingPart : model::TrainModel::kHeadPart;
    MOE_ASSERT(part < layers || part == model::TrainModel::kHeadPart, "{}: layer {} of {}", p.name, part, layers);
    part_params_[part].push_back(p.data);
    const bool held =
        (emb_ && p.name == tied_name_) || std::find(sp_grads_.begin(), sp_grads_.end(), p.name) != sp_grads_.end();
    if (!held) part_grads_[part].push_back(p.grad);
  }
}

void ParallelOptimizer::begin_overlapped_reduce() {
  for (Region* r : {&dense_, &experts_})
    if (r->buckets) r->buckets->begin_reduce();
}

void ParallelOptimizer::grads_final(int part) {
  const auto it = part_grads_.find(part);
  if (it == part_grads_.end()) return;
  for (const float* g : it->second)
    for (Region* r : {&dense_, &experts_})
      if (r->buckets) r->buckets->grad_final(g);
}

std::pair<int, int> ParallelOptimizer::overlapped_buckets() const {
  std::pair<int, int> n{0, 0};
  if (overlaps_grad_reduce())
    for (const Region* r : {&dense_, &experts_})
      if (r->buckets) n.first += r->buckets->reduced_early(), n.second += r->buckets->size();
  return n;
}

void ParallelOptimizer::params_needed(int part) {
  const auto it = part_params_.find(part);
  if (it == part_params_.end()) return;
  for (const float* p : it->second)
    for (Region* r : {&dense_, &experts_})
      if (r->buckets) r->buckets->param_needed(p);
}

void ParallelOptimizer::finish_param_gather() const {
  for (const Region* r : {&dense_, &experts_})
    if (r->buckets) r->buckets->finish_gather();
}

bool ParallelOptimizer::counted_in_norm(const std::string& name) const {
  // Megatron's param_is_not_shared (the tied output copy) and param_is_not_tensor_parallel_duplicate
  // (split, or on TP rank 0).
  // Experts are never TP duplicates: split over ETP = TP, or whole and different per TP rank under
  // folding (their copies are the expert-data-parallel ones, which the reduction counts once).
  if (emb_ && name == model::names::kOutput) return false;
  return !tp_ || tp_->rank() == 0 || spec_->tp_split(name) || model::names::expert_index(name) >= 0;
}

Tensor ParallelOptimizer::gather_tp(const std::string& name, const float* local, const Shape& local_shape) const {
  const int64_t n = shape_numel(local_shape);
  if (!spec_->tp_split(name)) return Tensor::borrow(local_shape, DType::F32, local, nullptr).to(DType::F32);
  std::vector<float> all(size_t(n) * size_t(tp_->size()));
  tp_->all_gather(local, all.data(), n, dist::DataType::kF32);
  Shape full = local_shape;
  const bool vocab = name == model::names::kEmbedding || name == model::names::kOutput;
  std::string local_name;
  Shape piece;
  // The whole shape: the piece's dimension that ShardSpec splits times TP (an expert's EP rank
  // holds it).
  const int64_t e = model::names::expert_index(name);
  const int ep = e >= 0 ? int(e / local_experts_) : 0;
  for (size_t d = 0; d < full.size(); ++d) {
    Shape guess = local_shape;
    guess[d] *= tp_->size();
    if (spec_->local_part(name, guess, 0, 0, ep, &local_name, &piece) && piece == local_shape) {
      full = guess;
      break;
    }
  }
  Tensor t = spec_->merge(name, full, DType::F32, [&](int tp, int, int, const std::string&) {
    return Tensor::borrow(local_shape, DType::F32, all.data() + size_t(tp) * size_t(n), nullptr);
  });
  if (vocab) t = t.slice_rows(0, model_.config().vocab_size).to(DType::F32);
  return t;
}

double ParallelOptimizer::reduce_and_clip(double max_norm) {
  // Sum of squares of what this rank holds, counted once over the job: sharded regions count
  // their shard; a replicated region counts once per copy group (the experts once per EP rank).
  double dense_shard = 0, expert_shard = 0, dense_rep = 0, expert_rep = 0;
  if (!sp_grads_.empty()) {  // one all-reduce over TP for every sequence-parallel partial gradient
    std::vector<float> buf;
    for (const std::string& n : sp_grads_) {
      const Tensor& g = model_.grads().at(n);
      buf.insert(buf.end(), g.f32(), g.f32() + g.numel());
    }
    tp_->all_reduce(buf.data(), int64_t(buf.size()), dist::DataType::kF32, dist::ReduceOp::kSum);
    size_t at = 0;
    for (const std::string& n : sp_grads_) {
      Tensor& g = model_.grads().at(n);
      std::copy_n(buf.begin() + std::ptrdiff_t(at), g.numel(), g.f32());
      at += size_t(g.numel());
    }
  }
  if (emb_) {  // the tied embedding's two gradients summed, before any DP reduction
    Tensor& g = model_.grads().at(tied_name_);
    emb_->all_reduce(g.f32(), g.numel(), dist::DataType::kF32, dist::ReduceOp::kSum);
  }
  for (Region* r : {&dense_, &experts_}) {
    if (r->refs.empty()) continue;
    const bool bucketed = r->buckets && overlap_.grad_reduce;
    if (bucketed) r->buckets->finish_reduce();  // what the backward did not start yet, then all awaited
    if (r->dist_opt) {
      (r == &dense_ ? dense_shard : expert_shard) =
          bucketed ? r->dist_opt->shard_sum_of_squares() : r->dist_opt->reduce_gradients();
      continue;
    }
    if (r->group && !bucketed)
      r->group->all_reduce(r->grads.data(), int64_t(r->grads.size()), dist::DataType::kF32, dist::ReduceOp::kSum);
    (r == &dense_ ? dense_rep : expert_rep) = grad_sum_of_squares(r->counted);
  }
  if (world_) {  // shards are disjoint over their group; replicated copies are equal
    world_->all_reduce(&dense_shard, 1, dist::DataType::kF64, dist::ReduceOp::kSum);
    if (experts_.dist_opt) experts_.group->all_reduce(&expert_shard, 1, dist::DataType::kF64, dist::ReduceOp::kSum);
  }
  const double total = job_sum_of_squares(dense_shard + dense_rep, expert_shard + expert_rep);
  const double norm = std::sqrt(total);
  const float f = clip_factor(norm, max_norm);
  if (f != 1.0f)
    for (Region* r : {&dense_, &experts_}) {
      if (r->dist_opt) r->dist_opt->scale_gradients(f);
      else if (!r->refs.empty()) scale_grads(r->refs, f);
    }
  return norm;
}

double ParallelOptimizer::job_sum_of_squares(double dense, double experts) const {
  // Each TP rank its dense slices; each EP rank its experts and each ETP rank their slices (under
  // folding the EP group spans TP ranks, so experts and dense parts are summed apart); each stage
  // its layers.
  if (groups_ && groups_->ep().size() > 1)
    groups_->ep().all_reduce(&experts, 1, dist::DataType::kF64, dist::ReduceOp::kSum);
  if (groups_ && groups_->etp().size() > 1)
    groups_->etp().all_reduce(&experts, 1, dist::DataType::kF64, dist::ReduceOp::kSum);
  if (tp_) tp_->all_reduce(&dense, 1, dist::DataType::kF64, dist::ReduceOp::kSum);
  double total = dense + experts;
  if (pp_) pp_->all_reduce(&total, 1, dist::DataType::kF64, dist::ReduceOp::kSum);
  return total;
}

double ParallelOptimizer::params_norm() const {
  finish_param_gather();
  // Every DP rank holds the whole parameters (the distributed optimizer gathers them after each
  // step): the counted ones summed on this rank, the experts over EP, then over TP and the stages.
  auto sum_of_squares = [](std::span<const ParamRef> refs) {
    double s = 0;
    for (const ParamRef& p : refs)
      for (size_t i = 0; i < p.numel; ++i) s += double(p.data[i]) * double(p.data[i]);
    return s;
  };
  return std::sqrt(job_sum_of_squares(sum_of_squares(dense_.counted), sum_of_squares(experts_.counted)));
}

bool ParallelOptimizer::step(double lr, double grad_bound) {
  finish_param_gather();  // a part no forward needed since the last step (none in a full model)
  int32_t bad = 0;
  for (Region* r : {&dense_, &experts_}) {
    if (r->refs.empty()) continue;
    const bool ok = r->dist_opt ? r->dist_opt->step_stays_finite(lr, grad_bound)
                                : r->opt->step_stays_finite(r->refs, lr, grad_bound);
    bad += ok ? 0 : 1;
  }
  if (world_) world_->all_reduce(&bad, 1, dist::DataType::kI32, dist::ReduceOp::kSum);
  if (tp_) tp_->all_reduce(&bad, 1, dist::DataType::kI32, dist::ReduceOp::kSum);
  if (pp_) pp_->all_reduce(&bad, 1, dist::DataType::kI32, dist::ReduceOp::kSum);
  if (bad > 0) return false;
  for (Region* r : {&dense_, &experts_}) {
    const bool deferred = r->dist_opt && r->buckets && overlap_.param_gather;
    if (r->dist_opt) r->dist_opt->apply_step(lr, !deferred);
    else if (!r->refs.empty()) r->opt->apply_step(r->refs, lr);
    if (deferred) r->buckets->start_gather();
  }
  return true;
}

void ParallelOptimizer::load() {
  for (Region* r : {&dense_, &experts_}) {
    if (r->dist_opt) r->dist_opt->load_state(local_);
    else if (r->opt) copy_state(local_, *r->opt, r->refs);
  }
  release_local_state();
}

void ParallelOptimizer::gather_local_state() {
  for (Region* r : {&dense_, &experts_}) {
    if (r->dist_opt) r->dist_opt->gather_state(local_);
    else if (r->opt) copy_state(*r->opt, local_, r->refs);
  }
}

bool ParallelOptimizer::writes_rank_file() const {
  if (!groups_) return true;
  return groups_->ep().size() > 1 ? groups_->edp().rank() == 0 : groups_->dp_cp().rank() == 0;
}

const Optimizer& ParallelOptimizer::gather_rank_state() {
  finish_param_gather();
  gather_local_state();
  return local_;
}

void ParallelOptimizer::release_local_state() {
  local_.reset();
  local_.bind(all_);
}

ParallelOptimizer::Whole ParallelOptimizer::whole_state(bool with_optimizer) {
  finish_param_gather();
  Whole w;
  if (with_optimizer && world_) gather_local_state();
  for (const ParamRef& p : dense_.refs) w.params.emplace(p.name, model_.params().at(p.name));  // all, on one process
  dist::Communicator* ep = groups_ && groups_->ep().size() > 1 ? &groups_->ep() : nullptr;
  const size_t n = experts_.params.size();
  const int P = ep ? ep->size() : 1;
  // Every EP rank's experts (same layout on each: by layer, local expert, fc1 then fc2).
  std::shared_ptr<float[]> gathered;
  const float* experts = experts_.params.data();
  if (ep && n > 0) {
    gathered = std::shared_ptr<float[]>(new float[n * size_t(P)]);
    ep->all_gather(experts_.params.data(), gathered.get(), int64_t(n), dist::DataType::kF32);
    experts = gathered.get();
  }
  // Experts split over ETP = TP are gathered over TP too (every TP rank walks the same experts);
  // whole ones (folding, ETP 1) came whole over EP.
  const bool experts_split = tp_ && groups_->layout().etp > 1;
  auto global_expert = [&](int q, const ParamRef& p) {
    return model::names::shift_expert(p.name, (ep ? q : 0) * local_experts_ + (ep ? 0 : first_expert_));
  };
  for (int q = 0; q < P; ++q)
    for (const ParamRef& p : experts_.refs) {
      const Tensor& t = model_.params().at(p.name);
      const size_t off = size_t(q) * n + size_t(p.data - experts_.params.data());
      const std::string g = global_expert(q, p);
      if (experts_split) w.params[g] = gather_tp(g, experts + off, t.shape());
      else w.params.emplace(g, gathered ? Tensor::borrow(t.shape(), DType::F32, experts + off, gathered) : t);
    }
  if (tp_) {  // every TP rank's dense slices: the whole tensors, in the model's order on every rank
    for (const ParamRef& p : dense_.refs)
      w.params[p.name] = gather_tp(p.name, p.data, model_.params().at(p.name).shape());
  }
  if (!with_optimizer) {
    if (pp_) gather_stages(w);
    return w;
  }
  if (!world_) {  // one process: the model's own optimizer already holds the whole state
    w.optimizer = dense_.opt.get();
    return w;
  }
  w.owned = std::make_unique<Optimizer>(cfg_);
  w.optimizer = w.owned.get();
  std::vector<ParamRef> refs;
  for (auto& [name, t] : w.params) {
    float* d = const_cast<float*>(t.f32());
    refs.push_back({name, d, d, size_t(t.numel()), decays(name)});
  }
  w.owned->bind(in_address_order(refs));
  w.owned->set_steps(local_.steps());
  if (local_.has_state()) {
    std::vector<float> mine(n), all(n * size_t(P));
    for (const auto& key : local_.state_keys()) {  // (w.optimizer's keys: the same config)
      for (const ParamRef& p : dense_.refs) {
        auto dst = w.owned->state(p.name, key);
        if (tp_) {
          const Tensor t = gather_tp(p.name, local_.state(p.name, key).data(), model_.params().at(p.name).shape());
          std::copy_n(t.f32(), dst.size(), dst.begin());
        } else {
          const auto src = local_.state(p.name, key);
          std::copy(src.begin(), src.end(), dst.begin());
        }
      }
      if (n == 0) continue;
      const auto flat = local_.flat_state(key);  // bound in flat order: the expert region is its tail
      std::copy(flat.end() - std::ptrdiff_t(n), flat.end(), mine.begin());
      if (ep) ep->all_gather(mine.data(), all.data(), int64_t(n), dist::DataType::kF32);
      else all = mine;
      for (int q = 0; q < P; ++q)
        for (const ParamRef& p : experts_.refs) {
          const size_t off = size_t(q) * n + size_t(p.data - experts_.params.data());
          const std::string g = global_expert(q, p);
          auto dst = w.owned->state(g, key);
          if (experts_split) {
            const Tensor t = gather_tp(g, all.data() + off, model_.params().at(p.name).shape());
            std::copy_n(t.f32(), dst.size(), dst.begin());
          } else {
            std::copy_n(all.begin() + std::ptrdiff_t(off), dst.size(), dst.begin());
          }
        }
    }
  }
  release_local_state();
  if (pp_) gather_stages(w);
  return w;
}

void ParallelOptimizer::gather_stages(Whole& w) const {
  // Each stage in turn broadcasts its tensors' names and shapes (a line each), then their values
  // and, when there is state, each state key's values, in that order, as one buffer.
  const Optimizer* opt = w.optimizer;
  const bool with_state = opt && opt->has_state();
  const std::vector<std::string> keys = with_state ? opt->state_keys() : std::vector<std::string>{};
  Whole out;
  std::vector<std::pair<std::string, Tensor>> states;  // "key\nname" -> values
  for (int s = 0; s < pp_->size(); ++s) {
    std::string list;
    std::vector<const Tensor*> mine;
    if (pp_->rank() == s)
      for (const auto& [name, t] : w.params) {
        if (emb_ && name == model::names::kOutput) continue;  // the tied copy: the embedding is saved
        std::string line = name;
        for (int64_t d : t.shape()) line += " " + std::to_string(d);
        list += line + "\n";
        mine.push_back(&t);
      }
    list = dist::broadcast_string(*pp_, list, s);
    std::vector<std::pair<std::string, Shape>> entries;
    size_t total = 0;
    for (size_t at = 0; at < list.size();) {
      const size_t end = list.find('\n', at);
      std::istringstream line(list.substr(at, end - at));
      std::string name;
      line >> name;
      Shape shape;
      for (int64_t d = 0; line >> d;) shape.push_back(d);
      total += size_t(shape_numel(shape));
      entries.push_back({name, shape});
      at = end + 1;
    }
    std::vector<float> buf(total * (1 + keys.size()));
    if (pp_->rank() == s) {
      size_t at = 0;
      for (const Tensor* t : mine)
        std::copy_n(t->f32(), t->numel(), buf.begin() + std::ptrdiff_t(at)), at += size_t(t->numel());
      for (const auto& key : keys)
        for (size_t i = 0; i < entries.size(); ++i) {
          const auto v = opt->state(entries[i].first, key);
          std::copy(v.begin(), v.end(), buf.begin() + std::ptrdiff_t(at)), at += v.size();
        }
    }
    pp_->broadcast(buf.data(), int64_t(buf.size()), dist::DataType::kF32, s);
    size_t at = 0;
    for (size_t k = 0; k <= keys.size(); ++k)
      for (const auto& [name, shape] : entries) {
        Tensor t(shape, DType::F32);
        std::copy_n(buf.begin() + std::ptrdiff_t(at), t.numel(), t.f32());
        at += size_t(t.numel());
        if (k == 0) out.params.emplace(name, t);
        else states.push_back({keys[k - 1] + "\n" + name, t});
      }
  }
  if (opt) {
    out.owned = std::make_unique<Optimizer>(cfg_);
    out.optimizer = out.owned.get();
    std::vector<ParamRef> refs;
    for (auto& [name, t] : out.params) refs.push_back({name, t.f32(), t.f32(), size_t(t.numel()), decays(name)});
    out.owned->bind(refs);
    out.owned->set_steps(opt->steps());
    for (const auto& [kn, t] : states) {
      const size_t nl = kn.find('\n');
      auto dst = out.owned->state(kn.substr(nl + 1), kn.substr(0, nl));
      std::copy_n(t.f32(), dst.size(), dst.begin());
    }
  }
  w = std::move(out);
}

void ParallelOptimizer::sync_tied_output(bool with_state) {
  if (!emb_) return;
  // Root 0 of the embedding group is the first stage: its embedding onto the last stage's copy.
  Tensor& p = model_.params().at(tied_name_);
  emb_->broadcast(p.f32(), p.numel(), dist::DataType::kF32, 0);
  int32_t state = with_state && local_.has_state() ? 1 : 0;
  emb_->all_reduce(&state, 1, dist::DataType::kI32, dist::ReduceOp::kMax);
  if (state == 0) return;
  for (const auto& key : local_.state_keys()) {
    const std::span<float> v = local_.state(tied_name_, key);
    emb_->broadcast(v.data(), int64_t(v.size()), dist::DataType::kF32, 0);
  }
}

}  // namespace moe::train
