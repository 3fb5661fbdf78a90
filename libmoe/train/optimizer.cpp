#include "train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "core/error.h"
#include "core/parallel.h"

namespace moe::train {

namespace {

// Work is cut into fixed-size blocks over all parameters, so that many small tensors share one
// parallel region and the norm's partial sums are the same whatever the thread count.
constexpr size_t kBlock = size_t(1) << 15;
struct Block {
  size_t param, begin, end;
};

const std::vector<Block>& blocks_of(std::span<const ParamRef> params) {
  thread_local std::vector<Block> blocks;  // reused across steps
  blocks.clear();
  for (size_t p = 0; p < params.size(); ++p)
    for (size_t b = 0; b < params[p].numel; b += kBlock)
      blocks.push_back({p, b, std::min(params[p].numel, b + kBlock)});
  return blocks;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

}  // namespace

bool decays(const std::string& n) {
  return n.find("norm") == std::string::npos && !ends_with(n, ".bias") && !ends_with(n, "_bias");
}

bool decays(const std::string& n, size_t ndim) { return ndim >= 2 && decays(n); }

std::vector<ParamRef> in_address_order(std::span<const ParamRef> params) {
  std::vector<ParamRef> out(params.begin(), params.end());
  std::sort(out.begin(), out.end(), [](const ParamRef& a, const ParamRef& b) { return std::less<>()(a.data, b.data); });
  return out;
}

Optimizer::Optimizer(OptimizerConfig cfg) : cfg_(std::move(cfg)) {
  if (cfg_.type != "adam" && cfg_.type != "sgd") throw_input("--optimizer '{}' is not one of adam, sgd", cfg_.type);
  if (!(cfg_.beta1 >= 0 && cfg_.beta1 < 1)) throw_input("--adam_beta1 must be in [0, 1), got {}", cfg_.beta1);
  if (!(cfg_.beta2 >= 0 && cfg_.beta2 < 1)) throw_input("--adam_beta2 must be in [0, 1), got {}", cfg_.beta2);
  // eps 0 divides 0 by 0 for every parameter without gradient (QA #10: NaN checkpoints).
  if (!(cfg_.eps > 0 && std::isfinite(cfg_.eps)))
    throw_input("--adam_eps must be a finite number > 0, got {}", cfg_.eps);
  if (!(cfg_.weight_decay >= 0 && std::isfinite(cfg_.weight_decay)))
    throw_input("--weight_decay must be a finite number >= 0, got {}", cfg_.weight_decay);
  if (!(cfg_.sgd_momentum >= 0 && cfg_.sgd_momentum < 1))
    throw_input("--sgd_momentum must be in [0, 1), got {}", cfg_.sgd_momentum);
  if (cfg_.type == "adam") keys_ = {"exp_avg", "exp_avg_sq"};
  else if (cfg_.sgd_momentum > 0) keys_ = {"momentum_buffer"};
}

void Optimizer::bind(std::span<const ParamRef> params) {
  if (bound()) {
    bool same = layout_.size() == params.size();
    for (size_t i = 0; same && i < params.size(); ++i)
      same = layout_[i].name == params[i].name && layout_[i].numel == params[i].numel;
    MOE_ASSERT(same, "optimizer bound to {} parameters is bound again to {} others; reset() first", layout_.size(),
               params.size());
    return;
  }
  size_t at = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    if (!index_.emplace(params[i].name, i).second) {
      layout_.clear(), index_.clear();
      throw_internal("optimizer bound to parameter '{}' twice", params[i].name);
    }
    layout_.push_back({params[i].name, at, params[i].numel});
    at += params[i].numel;
  }
  total_ = at;
}

const Optimizer::Slot& Optimizer::slot_of(const std::string& name, size_t hint) const {
  if (hint < layout_.size() && layout_[hint].name == name) return layout_[hint];
  auto it = index_.find(name);
  MOE_ASSERT(it != index_.end(), "optimizer has no state for parameter '{}' (bound to {} parameters)", name,
             layout_.size());
  return layout_[it->second];
}

size_t Optimizer::key_index(const std::string& key) const {
  return size_t(std::find(keys_.begin(), keys_.end(), key) - keys_.begin());
}

void Optimizer::allocate() {
  if (allocated_) return;
  flat_.assign(keys_.size(), {});
  for (auto& f : flat_) f.assign(total_, 0.0f);
  allocated_ = true;
}

std::vector<StateRef> Optimizer::state_refs(std::span<const ParamRef> params) {
  if (!bound()) bind(params);
  allocate();
  std::vector<StateRef> refs;
  for (size_t i = 0; i < params.size(); ++i) {
    const Slot& sl = slot_of(params[i].name, i);
    MOE_ASSERT(sl.numel == params[i].numel, "optimizer state of {} has {} values, the parameter {}", sl.name, sl.numel,
               params[i].numel);
    for (size_t k = 0; k < keys_.size(); ++k)
      refs.push_back({params[i].name, keys_[k], std::span<float>(flat_[k].data() + sl.offset, sl.numel)});
  }
  return refs;
}

std::span<float> Optimizer::state(const std::string& name, const std::string& key) {
  MOE_ASSERT(bound(), "optimizer state of '{}' asked before bind()", name);
  const size_t k = key_index(key);
  MOE_ASSERT(k < keys_.size(), "the {} optimizer keeps no '{}' state", cfg_.type, key);
  const Slot& sl = slot_of(name, layout_.size());
  allocate();
  return {flat_[k].data() + sl.offset, sl.numel};
}

std::span<const float> Optimizer::state(const std::string& name, const std::string& key) const {
  const size_t k = key_index(key);
  if (!has_state() || k >= keys_.size()) return {};
  auto it = index_.find(name);
  if (it == index_.end()) return {};
  const Slot& sl = layout_[it->second];
  return {flat_[k].data() + sl.offset, sl.numel};
}

std::span<const float> Optimizer::flat_state(const std::string& key) const {
  const size_t k = key_index(key);
  if (!has_state() || k >= keys_.size()) return {};
  return flat_[k];
}

void Optimizer::reset() {
  layout_.clear(), index_.clear(), flat_.clear();
  total_ = 0, allocated_ = false;
  steps_ = 0;
  w_max_ = s_max_ = -1;
}

void Optimizer::bind_state(std::span<const ParamRef> params) {
  // Resolve the state views once per step (binding and allocating on first sight).
  if (!bound()) bind(params);
  allocate();
  slots_.assign(params.size() * 2, nullptr);
  for (size_t i = 0; i < params.size(); ++i) {
    const Slot& sl = slot_of(params[i].name, i);
    MOE_ASSERT(sl.numel == params[i].numel, "optimizer state of {} has {} values, the parameter {}", sl.name, sl.numel,
               params[i].numel);
    for (size_t k = 0; k < keys_.size(); ++k) slots_[2 * i + k] = flat_[k].data() + sl.offset;
  }
}

namespace {

// Per-block maxima, reduced in a fixed order after the parallel loop.
struct BlockMax {
  float w = 0, s = 0;
};

float abs_max(float acc, float x) { return std::isnan(x) || std::isnan(acc) ? NAN : std::max(acc, std::fabs(x)); }

}  // namespace

void Optimizer::measure_maxima(std::span<const ParamRef> params) {
  const auto& blocks = blocks_of(params);
  std::vector<BlockMax> mx(blocks.size());
  const bool has_state = !keys_.empty();
  parallel_for(int64_t(blocks.size()), [&](int64_t lo, int64_t hi) {
    for (int64_t bi = lo; bi < hi; ++bi) {
      const Block& bk = blocks[size_t(bi)];
      const float* w = params[bk.param].data;
      const float* m = has_state ? slots_[2 * bk.param] : nullptr;
      BlockMax r;
      for (size_t i = bk.begin; i < bk.end; ++i) {
        r.w = abs_max(r.w, w[i]);
        if (m) r.s = abs_max(r.s, m[i]);
      }
      mx[size_t(bi)] = r;
    }
  });
  w_max_ = s_max_ = 0;
  for (const auto& r : mx) w_max_ = abs_max(float(w_max_), r.w), s_max_ = abs_max(float(s_max_), r.s);
}

template <bool kWrite>
void Optimizer::update(std::span<const ParamRef> params, double lr, double* w_max, double* s_max) {
  const auto& blocks = blocks_of(params);
  const int64_t nb = int64_t(blocks.size());
  thread_local std::vector<BlockMax> maxima;  // reused across steps
  std::vector<BlockMax>& mx = maxima;         // the caller's: workers must not name their own
  mx.assign(blocks.size(), BlockMax{});
  const int64_t step = kWrite ? steps_ : steps_ + 1;  // the step being taken
  // Scalars are formed in double and rounded to float once, as torch does with Python floats
  // applied to fp32 tensors; the element-wise order follows torch's single-tensor AdamW / SGD.
  // The maxima cost two compares per element in a loop bound by memory traffic.
  if (cfg_.type == "adam") {
    const double bc1 = 1.0 - std::pow(double(cfg_.beta1), double(step));
    const double bc2 = 1.0 - std::pow(double(cfg_.beta2), double(step));
    const float b1 = cfg_.beta1, a1 = float(1.0 - double(cfg_.beta1));
    const float b2 = cfg_.beta2, a2 = float(1.0 - double(cfg_.beta2));
    const float bc2_sqrt = float(std::sqrt(bc2)), eps = cfg_.eps, neg_step = float(-lr / bc1);
    const float keep_decay = float(1.0 - lr * double(cfg_.weight_decay));
    parallel_for(nb, [&](int64_t lo, int64_t hi) {
      for (int64_t bi = lo; bi < hi; ++bi) {
        const Block& bk = blocks[size_t(bi)];
        const ParamRef& p = params[bk.param];
        float* __restrict m = slots_[2 * bk.param];
        float* __restrict v = slots_[2 * bk.param + 1];
        float* __restrict w = p.data;
        const float* __restrict g = p.grad;
        const float keep = p.decay ? keep_decay : 1.0f;
        float wm = 0, sm = 0, vm = 0;
        for (size_t i = bk.begin; i < bk.end; ++i) {
          float wi = w[i] * keep;
          const float mi = m[i] * b1 + a1 * g[i];
          const float vi = v[i] * b2 + a2 * g[i] * g[i];
          const float denom = std::sqrt(vi) / bc2_sqrt + eps;
          wi = wi + neg_step * (mi / denom);
          if constexpr (kWrite) w[i] = wi, m[i] = mi, v[i] = vi;
          // max() drops NaN; the sums below keep it, so a NaN anywhere reaches the result.
          wm = std::max(wm, std::fabs(wi)), sm = std::max(sm, std::fabs(mi)), vm = std::max(vm, vi);
          if constexpr (!kWrite) wm += 0.0f * wi, sm += 0.0f * mi, vm += 0.0f * vi;
        }
        // An overflowing second moment (|g| > 1e19) is as fatal to the saved state as a NaN.
        mx[size_t(bi)] = {wm, vm <= std::numeric_limits<float>::max() ? sm : INFINITY};
      }
    });
  } else {
    // torch.optim.SGD: d = g + wd p; with momentum buf = mom buf + d (a zero buffer makes the
    // first step's buf = d, torch's clone), then p -= lr d.
    const float wd = cfg_.weight_decay, mom = cfg_.sgd_momentum, neg_lr = float(-lr);
    const bool use_mom = mom > 0;
    parallel_for(nb, [&](int64_t lo, int64_t hi) {
      for (int64_t bi = lo; bi < hi; ++bi) {
        const Block& bk = blocks[size_t(bi)];
        const ParamRef& p = params[bk.param];
        float* __restrict buf = slots_[2 * bk.param];
        float* __restrict w = p.data;
        const float* __restrict g = p.grad;
        const float pwd = p.decay ? wd : 0.0f;
        float wm = 0, sm = 0;
        for (size_t i = bk.begin; i < bk.end; ++i) {
          float d = pwd != 0 ? g[i] + pwd * w[i] : g[i];
          if (use_mom) {
            d = buf[i] * mom + d;
            if constexpr (kWrite) buf[i] = d;
            sm = std::max(sm, std::fabs(d));
            if constexpr (!kWrite) sm += 0.0f * d;
          }
          const float wi = w[i] + neg_lr * d;
          if constexpr (kWrite) w[i] = wi;
          wm = std::max(wm, std::fabs(wi));
          if constexpr (!kWrite) wm += 0.0f * wi;
        }
        mx[size_t(bi)] = {wm, sm};
      }
    });
  }
  double w = 0, s = 0;
  for (const auto& r : mx) {
    if (!std::isfinite(r.w) || !std::isfinite(r.s)) {
      *w_max = *s_max = std::numeric_limits<double>::infinity();
      return;
    }
    w = std::max(w, double(r.w)), s = std::max(s, double(r.s));
  }
  *w_max = w, *s_max = s;
}

bool Optimizer::step(std::span<const ParamRef> params, double lr, double grad_norm) {
  if (!step_stays_finite(params, lr, grad_norm)) return false;
  apply_step(params, lr);
  return true;
}

bool Optimizer::step_stays_finite(std::span<const ParamRef> params, double lr, double grad_norm) {
  bind_state(params);
  if (w_max_ < 0) measure_maxima(params);
  // A bound on every new |w| from last step's exact maxima and the gradient bound: when it is
  // far below float's range, no value can overflow (and inputs are finite), so the step is
  // applied directly. Otherwise (a huge --lr, a tiny --adam_eps, an exploding gradient) the step
  // is computed once without writing and applied only if every value stays finite.
  constexpr double kSafe = 1e30;
  const double G = grad_norm, n = double(steps_ + 1);
  double bound = std::numeric_limits<double>::infinity();
  if (std::isfinite(lr) && std::isfinite(G) && G < 1e15 && std::isfinite(w_max_) && std::isfinite(s_max_)) {
    if (cfg_.type == "adam") {
      const double m_next = double(cfg_.beta1) * s_max_ + (1.0 - double(cfg_.beta1)) * G;
      const double bc1 = 1.0 - std::pow(double(cfg_.beta1), n);
      bound = w_max_ * std::max(1.0, std::fabs(1.0 - lr * double(cfg_.weight_decay))) +
              std::fabs(lr) / bc1 * m_next / double(cfg_.eps);
    } else {
      const double d = G + double(cfg_.weight_decay) * w_max_ + double(cfg_.sgd_momentum) * s_max_;
      bound = w_max_ + std::fabs(lr) * d;
    }
  }
  if (bound < kSafe) return true;
  double w_new = 0, s_new = 0;
  update<false>(params, lr, &w_new, &s_new);
  return std::isfinite(w_new) && std::isfinite(s_new);
}

void Optimizer::apply_step(std::span<const ParamRef> params, double lr) {
  bind_state(params);
  if (w_max_ < 0) measure_maxima(params);
  double w_new = 0, s_new = 0;
  ++steps_;
  update<true>(params, lr, &w_new, &s_new);
  w_max_ = w_new, s_max_ = s_new;
}

double grad_sum_of_squares(std::span<const ParamRef> params) {
  const auto& blocks = blocks_of(params);
  thread_local std::vector<double> partial_sums;  // reused across steps
  std::vector<double>& partial = partial_sums;    // the caller's: workers must not name their own
  partial.assign(blocks.size(), 0.0);
  parallel_for(int64_t(blocks.size()), [&](int64_t lo, int64_t hi) {
    for (int64_t bi = lo; bi < hi; ++bi) {
      const Block& bk = blocks[size_t(bi)];
      const float* g = params[bk.param].grad;
      double s = 0;
      for (size_t i = bk.begin; i < bk.end; ++i) s += double(g[i]) * double(g[i]);
      partial[size_t(bi)] = s;
    }
  });
  double ss = 0;
  for (double s : partial) ss += s;
  return ss;
}

float clip_factor(double norm, double max_norm) {
  if (!std::isfinite(norm) || max_norm <= 0) return 1.0f;
  const double coeff = max_norm / (norm + 1e-6);
  return coeff >= 1.0 ? 1.0f : float(coeff);
}

double clip_grad_norm(std::span<const ParamRef> params, double max_norm) {
  const double norm = std::sqrt(grad_sum_of_squares(params));
  scale_grads(params, clip_factor(norm, max_norm));
  return norm;
}

void scale_grads(std::span<const ParamRef> params, float scale) {
  if (scale == 1.0f) return;
  const auto& blocks = blocks_of(params);
  parallel_for(int64_t(blocks.size()), [&](int64_t lo, int64_t hi) {
    for (int64_t bi = lo; bi < hi; ++bi) {
      const Block& bk = blocks[size_t(bi)];
      float* g = params[bk.param].grad;
      for (size_t i = bk.begin; i < bk.end; ++i) g[i] *= scale;
    }
  });
}

}  // namespace moe::train
