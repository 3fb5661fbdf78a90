#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/parallel.h"

namespace moe::kernels::cpu {

void causal_attention(const AttentionShape& s, const float* q_THd, const float* k_SGd, const float* v_SGd,
                      float* out_THd) {
  const int64_t r = s.nh / s.ng, d = s.d, row = s.ng * d;
  // One (token, head) pair per work item; scores live in a per-thread buffer.
  parallel_for(s.T * s.nh, [&](int64_t b, int64_t e) {
    std::vector<float> score(size_t(s.pos0 + s.T));
    for (int64_t i = b; i < e; ++i) {
      const int64_t t = i / s.nh, h = i % s.nh, g = h / r, n = s.pos0 + t + 1;
      const float* q = q_THd + (t * s.nh + h) * d;
      float m = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        const float* k = k_SGd + j * row + g * d;
        float dot = 0;
        for (int64_t c = 0; c < d; ++c) dot += q[c] * k[c];
        score[size_t(j)] = dot * s.scale;
        m = std::max(m, score[size_t(j)]);
      }
      double sum = 0;
      for (int64_t j = 0; j < n; ++j) sum += (score[size_t(j)] = std::exp(score[size_t(j)] - m));
      float inv = float(1.0 / sum);
      float* o = out_THd + (t * s.nh + h) * d;
      std::fill(o, o + d, 0.0f);
      for (int64_t j = 0; j < n; ++j) {
        const float* v = v_SGd + j * row + g * d;
        float p = score[size_t(j)] * inv;
        for (int64_t c = 0; c < d; ++c) o[c] += p * v[c];
      }
    }
  });
}

}  // namespace moe::kernels::cpu
