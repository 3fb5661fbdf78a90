#include "train/optimizer.h"

#include <cmath>

#include "core/error.h"
#include "core/parallel.h"

namespace moe::train {

bool decays(const std::string& n) {
  auto ends = [&](const std::string& s) { return n.size() >= s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0; };
  return n.find("norm") == std::string::npos && !ends(".bias") && !ends("_bias");
}

Optimizer::Optimizer(OptimizerConfig cfg) : cfg_(std::move(cfg)) {
  if (cfg_.type != "adam" && cfg_.type != "sgd") throw_input("--optimizer '{}' is not one of adam, sgd", cfg_.type);
}

void Optimizer::step(std::span<const ParamRef> params, float lr) {
  ++steps_;
  const bool adam = cfg_.type == "adam";
  // torch's bias corrections, folded into the step size and the denominator.
  const double bc1 = 1.0 - std::pow(double(cfg_.beta1), double(steps_));
  const double bc2 = 1.0 - std::pow(double(cfg_.beta2), double(steps_));
  for (const ParamRef& p : params) {
    auto& st = state_[p.name];
    const float wd = p.decay ? cfg_.weight_decay : 0.0f;
    if (adam) {
      auto& m = st["exp_avg"];
      auto& v = st["exp_avg_sq"];
      m.resize(p.numel, 0.0f), v.resize(p.numel, 0.0f);
      const float b1 = cfg_.beta1, b2 = cfg_.beta2, eps = cfg_.eps;
      const float step_size = float(lr / bc1), sqrt_bc2 = float(std::sqrt(bc2));
      parallel_for(int64_t(p.numel), [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const float g = p.grad[i];
          p.data[i] *= 1.0f - lr * wd;
          m[size_t(i)] = b1 * m[size_t(i)] + (1.0f - b1) * g;
          v[size_t(i)] = b2 * v[size_t(i)] + (1.0f - b2) * g * g;
          p.data[i] -= step_size * m[size_t(i)] / (std::sqrt(v[size_t(i)]) / sqrt_bc2 + eps);
        }
      });
    } else {
      // torch.optim.SGD: d = g + wd p; with momentum buf = mom buf + d (the first step copies d).
      auto& buf = st["momentum_buffer"];
      const float mom = cfg_.sgd_momentum;
      const bool first = buf.empty();
      if (mom > 0 && first) buf.resize(p.numel);
      for (size_t i = 0; i < p.numel; ++i) {
        float d = p.grad[i] + wd * p.data[i];
        if (mom > 0) d = buf[i] = first ? d : mom * buf[i] + d;
        p.data[i] -= lr * d;
      }
    }
  }
}

double clip_grad_norm(std::span<const ParamRef> params, double max_norm) {
  double ss = 0;
  for (const ParamRef& p : params)
    for (size_t i = 0; i < p.numel; ++i) ss += double(p.grad[i]) * p.grad[i];
  const double norm = std::sqrt(ss);
  if (!std::isfinite(norm) || max_norm <= 0 || norm <= max_norm) return norm;
  const float scale = float(max_norm / (norm + 1e-6));  // torch's clip_grad_norm_ epsilon
  for (const ParamRef& p : params)
    for (size_t i = 0; i < p.numel; ++i) p.grad[i] *= scale;
  return norm;
}

}  // namespace moe::train
