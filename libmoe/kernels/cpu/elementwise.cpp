#include "kernels/cpu/elementwise.h"

#include <algorithm>
#include <cmath>

#include "core/parallel.h"
#include "kernels/cpu/vexp.h"

namespace moe::kernels::cpu {

// Row-wise ops split their rows over threads once there is enough work (prefill); a second
// core left idle during them shows up as time spent waiting at the next barrier.
namespace {
template <class F>
void rows(int64_t T, int64_t row_cost, F&& f) {
  if (T * row_cost < (1 << 16)) {
    f(int64_t(0), T);
  } else {
    parallel_for(T, f);
  }
}

void rmsnorm_rows(const float* x_TD, int64_t tb, int64_t te, int64_t D, const float* w_D, float eps, float* out_TD) {
  for (int64_t t = tb; t < te; ++t) {
    const float* x = x_TD + t * D;
    double ss = 0;
    for (int64_t i = 0; i < D; ++i) ss += double(x[i]) * x[i];
    float r = 1.0f / std::sqrt(float(ss / double(D)) + eps);
    float* o = out_TD + t * D;
    for (int64_t i = 0; i < D; ++i) o[i] = x[i] * r * w_D[i];
  }
}

}  // namespace

void rmsnorm(const float* x_TD, int64_t T, int64_t D, const float* w_D, float eps, float* out_TD) {
  rows(T, D, [&](int64_t tb, int64_t te) { rmsnorm_rows(x_TD, tb, te, D, w_D, eps, out_TD); });
}

void swiglu(const float* gu_T2F, int64_t T, int64_t F, float* h_TF) {
  rows(T, 8 * F, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      const float* g = gu_T2F + t * 2 * F;
      const float* u = g + F;
      float* h = h_TF + t * F;
      silu_mul(g, u, h, F);
    }
  });
}

void rope_apply(float* x_THd, int64_t T, int64_t H, int64_t d, const int32_t* pos_T, const float* cos_Pd2,
                const float* sin_Pd2) {
  const int64_t half = d / 2;
  rows(T, H * d, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      const float* c = cos_Pd2 + int64_t(pos_T[t]) * half;
      const float* s = sin_Pd2 + int64_t(pos_T[t]) * half;
      for (int64_t h = 0; h < H; ++h) {
        float* x = x_THd + (t * H + h) * d;
        for (int64_t i = 0; i < half; ++i) {
          float a = x[i], b = x[i + half];
          x[i] = a * c[i] - b * s[i];
          x[i + half] = b * c[i] + a * s[i];
        }
      }
    }
  });
}

void add_inplace(float* y, const float* x, int64_t n) {
  rows(n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] += x[i];
  });
}

}  // namespace moe::kernels::cpu
