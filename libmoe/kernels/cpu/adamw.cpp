#include "kernels/cpu/adamw.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/parallel.h"

namespace moe::kernels::cpu {

namespace {

// Fixed-size blocks: the maxima reduce in block order, the same for any thread count.
constexpr size_t kBlock = size_t(1) << 15;

template <class F>
UpdateMaxima over_blocks(size_t n, F&& block) {
  const int64_t nb = int64_t((n + kBlock - 1) / kBlock);
  std::vector<UpdateMaxima> mx(static_cast<size_t>(nb));
  auto body = [&](int64_t lo, int64_t hi) {
    for (int64_t bi = lo; bi < hi; ++bi)
      mx[size_t(bi)] = block(size_t(bi) * kBlock, std::min(n, size_t(bi + 1) * kBlock));
  };
  if (nb <= 1) body(0, nb);
  else parallel_for(nb, body);
  UpdateMaxima r;
  for (const auto& b : mx) {
    // std::max drops a NaN; adding 0 * x keeps it.
    r.w = std::max(r.w, b.w) + 0.0f * b.w;
    r.s = std::max(r.s, b.s) + 0.0f * b.s;
  }
  return r;
}

template <bool kWrite>
UpdateMaxima adamw_blocks(const AdamWScalars& c, float* __restrict w, float* __restrict m, float* __restrict v,
                          const float* __restrict g, size_t n, bool decay) {
  const float keep = decay ? c.keep_decay : 1.0f;
  return over_blocks(n, [&](size_t b, size_t e) {
    float wm = 0, sm = 0, vm = 0;
    for (size_t i = b; i < e; ++i) {
      float wi = w[i] * keep;
      const float mi = m[i] * c.b1 + c.a1 * g[i];
      const float vi = v[i] * c.b2 + c.a2 * g[i] * g[i];
      const float denom = std::sqrt(vi) / c.bc2_sqrt + c.eps;
      wi = wi + c.neg_step * (mi / denom);
      if constexpr (kWrite) w[i] = wi, m[i] = mi, v[i] = vi;
      wm = std::max(wm, std::fabs(wi)), sm = std::max(sm, std::fabs(mi)), vm = std::max(vm, vi);
      wm += 0.0f * wi, sm += 0.0f * mi, vm += 0.0f * vi;
    }
    // An overflowing second moment (|g| > 1e19) is as fatal to the saved state as a NaN.
    return UpdateMaxima{wm, vm <= std::numeric_limits<float>::max() ? sm : INFINITY};
  });
}

template <bool kWrite>
UpdateMaxima sgd_blocks(double lr, float wd, float mom, float* __restrict w, float* __restrict buf,
                        const float* __restrict g, size_t n, bool decay) {
  const float pwd = decay ? wd : 0.0f, neg_lr = float(-lr);
  const bool use_mom = mom > 0;
  return over_blocks(n, [&](size_t b, size_t e) {
    float wm = 0, sm = 0;
    for (size_t i = b; i < e; ++i) {
      float d = pwd != 0 ? g[i] + pwd * w[i] : g[i];
      if (use_mom) {
        d = buf[i] * mom + d;
        if constexpr (kWrite) buf[i] = d;
        sm = std::max(sm, std::fabs(d)) + 0.0f * d;
      }
      const float wi = w[i] + neg_lr * d;
      if constexpr (kWrite) w[i] = wi;
      wm = std::max(wm, std::fabs(wi)) + 0.0f * wi;
    }
    return UpdateMaxima{wm, sm};
  });
}

}  // namespace

AdamWScalars adamw_scalars(float beta1, float beta2, float eps, float weight_decay, double lr, int64_t step) {
  const double bc1 = 1.0 - std::pow(double(beta1), double(step));
  const double bc2 = 1.0 - std::pow(double(beta2), double(step));
  AdamWScalars c;
  c.b1 = beta1, c.a1 = float(1.0 - double(beta1));
  c.b2 = beta2, c.a2 = float(1.0 - double(beta2));
  c.bc2_sqrt = float(std::sqrt(bc2)), c.eps = eps, c.neg_step = float(-lr / bc1);
  c.keep_decay = float(1.0 - lr * double(weight_decay));
  return c;
}

UpdateMaxima adamw_update(const AdamWScalars& c, float* w, float* m, float* v, const float* g, size_t n, bool decay,
                          bool write) {
  return write ? adamw_blocks<true>(c, w, m, v, g, n, decay) : adamw_blocks<false>(c, w, m, v, g, n, decay);
}

UpdateMaxima sgd_update(double lr, float weight_decay, float momentum, float* w, float* buf, const float* g, size_t n,
                        bool decay, bool write) {
  return write ? sgd_blocks<true>(lr, weight_decay, momentum, w, buf, g, n, decay)
               : sgd_blocks<false>(lr, weight_decay, momentum, w, buf, g, n, decay);
}

}  // namespace moe::kernels::cpu
