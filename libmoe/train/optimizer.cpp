#include "train/optimizer.h"

#include <cmath>

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
    for (size_t b = 0; b < params[p].numel; b += kBlock) blocks.push_back({p, b, std::min(params[p].numel, b + kBlock)});
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

Optimizer::Optimizer(OptimizerConfig cfg) : cfg_(std::move(cfg)) {
  if (cfg_.type != "adam" && cfg_.type != "sgd") throw_input("--optimizer '{}' is not one of adam, sgd", cfg_.type);
  if (!(cfg_.beta1 >= 0 && cfg_.beta1 < 1)) throw_input("--adam_beta1 must be in [0, 1), got {}", cfg_.beta1);
  if (!(cfg_.beta2 >= 0 && cfg_.beta2 < 1)) throw_input("--adam_beta2 must be in [0, 1), got {}", cfg_.beta2);
  if (!(cfg_.eps >= 0)) throw_input("--adam_eps must be >= 0, got {}", cfg_.eps);
  if (!(cfg_.weight_decay >= 0)) throw_input("--weight_decay must be >= 0, got {}", cfg_.weight_decay);
  if (!(cfg_.sgd_momentum >= 0)) throw_input("--sgd_momentum must be >= 0, got {}", cfg_.sgd_momentum);
  if (cfg_.type == "adam") keys_ = {"exp_avg", "exp_avg_sq"};
  else if (cfg_.sgd_momentum > 0) keys_ = {"momentum_buffer"};
}

std::vector<StateRef> Optimizer::state_refs(std::span<const ParamRef> params) {
  const auto& keys = keys_;
  std::vector<StateRef> refs;
  for (const ParamRef& p : params)
    for (const auto& k : keys) {
      auto& v = state_[p.name][k];
      if (v.empty()) v.assign(p.numel, 0.0f);
      MOE_ASSERT(v.size() == p.numel, "optimizer state {} of {} has {} values, the parameter {}", k, p.name, v.size(),
                 p.numel);
      refs.push_back({p.name, k, &v});
    }
  return refs;
}

void Optimizer::reset() {
  state_.clear();
  steps_ = 0;
}

void Optimizer::step(std::span<const ParamRef> params, double lr) {
  // Resolve state buffers once (allocating on first sight), then update block by block.
  const auto& keys = keys_;
  slots_.assign(params.size() * 2, nullptr);
  for (size_t i = 0; i < params.size(); ++i) {
    auto& st = state_[params[i].name];
    for (size_t k = 0; k < keys.size(); ++k) {
      auto& v = st[keys[k]];
      if (v.empty()) v.assign(params[i].numel, 0.0f);
      MOE_ASSERT(v.size() == params[i].numel, "optimizer state {} of {} has {} values, the parameter {}", keys[k],
                 params[i].name, v.size(), params[i].numel);
      slots_[2 * i + k] = v.data();
    }
  }
  ++steps_;
  const auto& blocks = blocks_of(params);
  const int64_t nb = int64_t(blocks.size());
  // Scalars are formed in double and rounded to float once, as torch does with Python floats
  // applied to fp32 tensors; the element-wise order follows torch's single-tensor AdamW / SGD.
  if (cfg_.type == "adam") {
    const double bc1 = 1.0 - std::pow(double(cfg_.beta1), double(steps_));
    const double bc2 = 1.0 - std::pow(double(cfg_.beta2), double(steps_));
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
        for (size_t i = bk.begin; i < bk.end; ++i) {
          w[i] = w[i] * keep;
          m[i] = m[i] * b1 + a1 * g[i];
          v[i] = v[i] * b2 + a2 * g[i] * g[i];
          const float denom = std::sqrt(v[i]) / bc2_sqrt + eps;
          w[i] = w[i] + neg_step * (m[i] / denom);
        }
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
        for (size_t i = bk.begin; i < bk.end; ++i) {
          float d = pwd != 0 ? g[i] + pwd * w[i] : g[i];
          if (use_mom) d = buf[i] = buf[i] * mom + d;
          w[i] = w[i] + neg_lr * d;
        }
      }
    });
  }
}

double clip_grad_norm(std::span<const ParamRef> params, double max_norm) {
  const auto& blocks = blocks_of(params);
  thread_local std::vector<double> partial_sums;  // reused across steps
  std::vector<double>& partial = partial_sums;   // the caller's: workers must not name their own
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
  const double norm = std::sqrt(ss);
  if (!std::isfinite(norm) || max_norm <= 0) return norm;
  const double coeff = max_norm / (norm + 1e-6);
  if (coeff >= 1.0) return norm;
  const float scale = float(coeff);
  parallel_for(int64_t(blocks.size()), [&](int64_t lo, int64_t hi) {
    for (int64_t bi = lo; bi < hi; ++bi) {
      const Block& bk = blocks[size_t(bi)];
      float* g = params[bk.param].grad;
      for (size_t i = bk.begin; i < bk.end; ++i) g[i] *= scale;
    }
  });
  return norm;
}

}  // namespace moe::train
