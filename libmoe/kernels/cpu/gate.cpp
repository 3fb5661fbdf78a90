#include "kernels/cpu/gate.h"

#include <cmath>

#include "core/parallel.h"

namespace moe::kernels::cpu {

namespace {
template <class F>
void rows(int64_t T, int64_t D, F&& f) {
  if (T * D < (int64_t(1) << 16)) f(int64_t(0), T);
  else parallel_for(T, f);
}
}  // namespace

void shared_gate_forward(const float* logit_T, const float* shared_TD, int64_t T, int64_t D, float* gate_T,
                         float* y_TD) {
  rows(T, D, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float g = logit_T ? 1.0f / (1.0f + std::exp(-logit_T[t])) : 1.0f;
      gate_T[t] = g;
      for (int64_t i = 0; i < D; ++i) y_TD[t * D + i] += g * shared_TD[t * D + i];
    }
  });
}

void shared_gate_backward(const float* dy_TD, const float* shared_TD, const float* gate_T, int64_t T, int64_t D,
                          float* dshared_TD, float* dlogit_T) {
  rows(T, D, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float gt = gate_T[t];
      double dot = 0;
      for (int64_t i = 0; i < D; ++i) {
        dshared_TD[t * D + i] = gt * dy_TD[t * D + i];
        dot += double(dy_TD[t * D + i]) * shared_TD[t * D + i];
      }
      if (dlogit_T) dlogit_T[t] = float(dot * gt * (1.0f - gt));
    }
  });
}

}  // namespace moe::kernels::cpu
