#include "kernels/cpu/backward.h"

#include <cmath>
#include <vector>

#include "core/parallel.h"

namespace moe::kernels::cpu {

void rmsnorm_backward(const float* x_TD, int64_t T, int64_t D, const float* w_D, float eps, const float* dy_TD,
                      float* dx_TD, float* dw_D) {
  // Each thread sums its rows' weight gradient privately; the partial sums are added at the end
  // in thread order, so the result does not depend on scheduling.
  const int nt = num_threads();
  std::vector<double> part(size_t(nt) * size_t(D), 0.0);
  parallel_for(T, [&](int64_t b, int64_t e) {
    double* dw = part.data() + size_t(omp_get_thread_num()) * size_t(D);
    for (int64_t t = b; t < e; ++t) {
      const float* x = x_TD + t * D;
      const float* dy = dy_TD + t * D;
      double ss = 0, dot = 0;
      for (int64_t i = 0; i < D; ++i) ss += double(x[i]) * x[i];
      const double r = 1.0 / std::sqrt(ss / double(D) + eps);
      for (int64_t i = 0; i < D; ++i) {
        dot += double(dy[i]) * w_D[i] * x[i];
        dw[i] += double(dy[i]) * x[i] * r;
      }
      const double c = dot * r * r * r / double(D);
      float* dx = dx_TD + t * D;
      for (int64_t i = 0; i < D; ++i) dx[i] = float(r * w_D[i] * dy[i] - c * x[i]);
    }
  });
  for (int th = 0; th < nt; ++th)
    for (int64_t i = 0; i < D; ++i) dw_D[i] += float(part[size_t(th) * size_t(D) + size_t(i)]);
}

void swiglu_backward(const float* gu_T2F, const float* dh_TF, int64_t T, int64_t F, float* dgu_T2F) {
  parallel_for(T, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* g = gu_T2F + t * 2 * F;
      const float* u = g + F;
      const float* dh = dh_TF + t * F;
      float* dg = dgu_T2F + t * 2 * F;
      float* du = dg + F;
      for (int64_t f = 0; f < F; ++f) {
        const float s = 1.0f / (1.0f + std::exp(-g[f]));
        const float silu = g[f] * s;
        dg[f] = dh[f] * u[f] * s * (1.0f + g[f] * (1.0f - s));
        du[f] = dh[f] * silu;
      }
    }
  });
}

void rope_apply_backward(float* dx_THd, int64_t T, int64_t H, int64_t d, const int32_t* pos_T, const float* cos_Pd2,
                         const float* sin_Pd2) {
  const int64_t half = d / 2;
  parallel_for(T, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* c = cos_Pd2 + int64_t(pos_T[t]) * half;
      const float* s = sin_Pd2 + int64_t(pos_T[t]) * half;
      for (int64_t h = 0; h < H; ++h) {
        float* x = dx_THd + (t * H + h) * d;
        for (int64_t i = 0; i < half; ++i) {
          const float a = x[i], bb = x[i + half];
          x[i] = a * c[i] + bb * s[i];
          x[i + half] = bb * c[i] - a * s[i];
        }
      }
    }
  });
}

}  // namespace moe::kernels::cpu
