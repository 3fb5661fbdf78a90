#include "kernels/cpu/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "kernels/cpu/vexp.h"

namespace moe::kernels::cpu {

CrossEntropySums cross_entropy_forward_backward(float* logits_TV, int64_t T, int64_t V, const int32_t* labels_T,
                                                float grad_scale) {
  std::vector<double> loss_T(static_cast<size_t>(T), 0.0);
  std::vector<uint8_t> hit_T(static_cast<size_t>(T), 0);
  parallel_for(T, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      float* x = logits_TV + t * V;
      const int32_t label = labels_T[t];
      if (label < 0) {
        std::fill(x, x + V, 0.0f);
        continue;
      }
      // The first index of the maximum, as argmax: the vectorised max, then a plain search.
      const float m = max_value(x, V), x_label = x[label];
      const int64_t arg = std::find(x, x + V, m) - x;
      // x <- exp(x - m) in place (vectorised; the sum in double), then softmax = x / s.
      const double s = exp_shift_sum(x, V, m);
      loss_T[size_t(t)] = double(m) + std::log(s) - double(x_label);
      hit_T[size_t(t)] = arg == label;
      const float k = float(double(grad_scale) / s);
      for (int64_t i = 0; i < V; ++i) x[i] *= k;
      x[label] -= grad_scale;
    }
  });
  CrossEntropySums r;
  for (int64_t t = 0; t < T; ++t) {
    if (labels_T[t] < 0) continue;
    r.loss += loss_T[size_t(t)];
    r.count += 1;
    r.correct += hit_T[size_t(t)];
  }
  return r;
}

}  // namespace moe::kernels::cpu
