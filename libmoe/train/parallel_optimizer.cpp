#include "train/parallel_optimizer.h"

#include <algorithm>
#include <cmath>

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
                                     const dist::ProcessGroups* groups, bool distributed)
    : model_(model), groups_(groups), cfg_(cfg), local_(cfg) {
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
    MOE_ASSERT(l.pp == 1 && l.cp == 1, "the optimizer step supports data, tensor and expert parallelism only");
    MOE_ASSERT(l.tp == 1 || l.ep == 1, "tensor with expert parallelism needs sequence parallelism");
    world_ = &groups->dp();  // with PP = CP = 1 the DP and TP groups span every rank
    if (groups->dp().size() > 1) dense_.group = &groups->dp();
    if (groups->edp().size() > 1) experts_.group = &groups->edp();
    if (l.tp > 1) {
      tp_ = &groups->tp();
      spec_ = std::make_unique<model::ShardSpec>(model.config(), l, model::kMakeVocabSizeDivisibleBy);
    }
  }
  distributed_ = distributed && world_ != nullptr;
  const auto counted = [this](const std::string& n) { return counted_in_norm(n); };
  for (Region* r : {&dense_, &experts_}) {
    for (const ParamRef& p : r->refs)
      if (counted_in_norm(p.name)) r->counted.push_back(p);
    if (r->refs.empty()) continue;
    if (distributed_ && r->group)
      r->dist_opt = std::make_unique<DistributedOptimizer>(cfg, r->params, r->grads, r->refs, *r->group, counted);
    else (r->opt = std::make_unique<Optimizer>(cfg))->bind(r->refs);
  }
}

bool ParallelOptimizer::counted_in_norm(const std::string& name) const {
  // Megatron's param_is_not_tensor_parallel_duplicate: split, or on TP rank 0.
  return !tp_ || tp_->rank() == 0 || spec_->tp_split(name);
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
  // The whole shape: the piece's dimension that ShardSpec splits times TP.
  for (size_t d = 0; d < full.size(); ++d) {
    Shape guess = local_shape;
    guess[d] *= tp_->size();
    if (spec_->local_part(name, guess, 0, 0, 0, &local_name, &piece) && piece == local_shape) {
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
  double sharded = 0, dense_rep = 0, expert_rep = 0;
  for (Region* r : {&dense_, &experts_}) {
    if (r->refs.empty()) continue;
    if (r->dist_opt) {
      sharded += r->dist_opt->reduce_gradients();
      continue;
    }
    if (r->group)
      r->group->all_reduce(r->grads.data(), int64_t(r->grads.size()), dist::DataType::kF32, dist::ReduceOp::kSum);
    (r == &dense_ ? dense_rep : expert_rep) = grad_sum_of_squares(r->counted);
  }
  if (world_) {
    // Over the job: shards are disjoint; every EP rank holds different experts; dense copies are equal.
    double ep_part[1] = {expert_rep};
    if (groups_->ep().size() > 1) groups_->ep().all_reduce(ep_part, 1, dist::DataType::kF64, dist::ReduceOp::kSum);
    world_->all_reduce(&sharded, 1, dist::DataType::kF64, dist::ReduceOp::kSum);
    expert_rep = ep_part[0];
  }
  double total = sharded + dense_rep + expert_rep;
  if (tp_) tp_->all_reduce(&total, 1, dist::DataType::kF64, dist::ReduceOp::kSum);  // each TP rank its slices
  const double norm = std::sqrt(total);
  const float f = clip_factor(norm, max_norm);
  if (f != 1.0f)
    for (Region* r : {&dense_, &experts_}) {
      if (r->dist_opt) r->dist_opt->scale_gradients(f);
      else if (!r->refs.empty()) scale_grads(r->refs, f);
    }
  return norm;
}

bool ParallelOptimizer::step(double lr, double grad_bound) {
  int32_t bad = 0;
  for (Region* r : {&dense_, &experts_}) {
    if (r->refs.empty()) continue;
    const bool ok = r->dist_opt ? r->dist_opt->step_stays_finite(lr, grad_bound)
                                : r->opt->step_stays_finite(r->refs, lr, grad_bound);
    bad += ok ? 0 : 1;
  }
  if (world_) world_->all_reduce(&bad, 1, dist::DataType::kI32, dist::ReduceOp::kSum);
  if (tp_) tp_->all_reduce(&bad, 1, dist::DataType::kI32, dist::ReduceOp::kSum);
  if (bad > 0) return false;
  for (Region* r : {&dense_, &experts_}) {
    if (r->dist_opt) r->dist_opt->apply_step(lr);
    else if (!r->refs.empty()) r->opt->apply_step(r->refs, lr);
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
  return groups_->ep().size() > 1 ? groups_->edp().rank() == 0 : groups_->dp().rank() == 0;
}

const Optimizer& ParallelOptimizer::gather_rank_state() {
  gather_local_state();
  return local_;
}

void ParallelOptimizer::release_local_state() {
  local_.reset();
  local_.bind(all_);
}

ParallelOptimizer::Whole ParallelOptimizer::whole_state(bool with_optimizer) {
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
  for (int q = 0; q < P; ++q)
    for (const ParamRef& p : experts_.refs) {
      const Tensor& t = model_.params().at(p.name);
      const size_t off = size_t(q) * n + size_t(p.data - experts_.params.data());
      w.params.emplace(model::names::shift_expert(p.name, (ep ? q : 0) * local_experts_ + (ep ? 0 : first_expert_)),
                       gathered ? Tensor::borrow(t.shape(), DType::F32, experts + off, gathered) : t);
    }
  if (tp_) {  // every TP rank's slices (EP is 1): the whole tensors, in the model's order on every rank
    for (const ParamRef& p : all_) w.params[p.name] = gather_tp(p.name, p.data, model_.params().at(p.name).shape());
  }
  if (!with_optimizer) return w;
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
  if (tp_ && local_.has_state()) {
    for (const auto& key : local_.state_keys())
      for (const ParamRef& p : all_) {
        const Tensor t = gather_tp(p.name, local_.state(p.name, key).data(), model_.params().at(p.name).shape());
        auto dst = w.owned->state(p.name, key);
        std::copy_n(t.f32(), dst.size(), dst.begin());
      }
  } else if (local_.has_state()) {
    std::vector<float> mine(n), all(n * size_t(P));
    for (const auto& key : local_.state_keys()) {  // (w.optimizer's keys: the same config)
      for (const ParamRef& p : dense_.refs) {
        const auto src = local_.state(p.name, key);
        std::copy(src.begin(), src.end(), w.owned->state(p.name, key).begin());
      }
      if (n == 0) continue;
      const auto flat = local_.flat_state(key);  // bound in flat order: the expert region is its tail
      std::copy(flat.end() - std::ptrdiff_t(n), flat.end(), mine.begin());
      if (ep) ep->all_gather(mine.data(), all.data(), int64_t(n), dist::DataType::kF32);
      else all = mine;
      for (int q = 0; q < P; ++q)
        for (const ParamRef& p : experts_.refs) {
          const size_t off = size_t(q) * n + size_t(p.data - experts_.params.data());
          const std::string g =
              model::names::shift_expert(p.name, (ep ? q : 0) * local_experts_ + (ep ? 0 : first_expert_));
          auto dst = w.owned->state(g, key);
          std::copy_n(all.begin() + std::ptrdiff_t(off), dst.size(), dst.begin());
        }
    }
  }
  release_local_state();
  return w;
}

}  // namespace moe::train
