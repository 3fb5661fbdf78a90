// Compiled with -mavx2 -mfma; only called when cpu_has_avx2_fma_f16c().
#include <immintrin.h>

#include <cmath>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/simd_avx2.h"
#include "kernels/cpu/vexp.h"

namespace moe::kernels::cpu {

namespace {

// o[0, w) = sum_j p[j] * v_j[0, w) for w a multiple of 8 up to 64, the sums in registers.
template <int W8>
inline void weighted_sum(const float* p, float inv, int64_t n, const float* v, int64_t row, float* o) {
  __m256 acc[W8];
#pragma GCC unroll 8
  for (int u = 0; u < W8; ++u) acc[u] = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const __m256 pj = _mm256_set1_ps(p[j] * inv);
    const float* vj = v + j * row;
#pragma GCC unroll 8
    for (int u = 0; u < W8; ++u) acc[u] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8 * u), acc[u]);
  }
#pragma GCC unroll 8
  for (int u = 0; u < W8; ++u) _mm256_storeu_ps(o + 8 * u, acc[u]);
}

}  // namespace

void attend_decode_avx2(const AttentionShape& s, const float* q_THd, const float* k_SGd, const float* v_SGd,
                        float* out_THd, int64_t b, int64_t e, float* score) {
  const int64_t r = s.nh / s.ng, d = s.d, row = s.ng * d;
  for (int64_t i = b; i < e; ++i) {
    const int64_t t = i / s.nh, h = i % s.nh, g = h / r, n = s.pos0 + t + 1;
    const float* q = q_THd + (t * s.nh + h) * d;
    const float* kg = k_SGd + g * d;
    float m = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      const float* k = kg + j * row;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0;
      int64_t c = 0;
      for (; c + 16 <= d; c += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), _mm256_loadu_ps(k + c), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + c + 8), _mm256_loadu_ps(k + c + 8), a1);
      }
      for (; c + 8 <= d; c += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), _mm256_loadu_ps(k + c), a0);
      float dot = hsum(_mm256_add_ps(a0, a1));
      for (; c < d; ++c) dot += q[c] * k[c];
      score[j] = dot * s.scale;
      m = std::max(m, score[j]);
    }
    const float inv = float(1.0 / exp_shift_sum_avx2(score, n, m));
    float* o = out_THd + (t * s.nh + h) * d;
    const float* vg = v_SGd + g * d;
    int64_t c = 0;
    for (; c + 64 <= d; c += 64) weighted_sum<8>(score, inv, n, vg + c, row, o + c);
    switch ((d - c) / 8) {
      case 7: weighted_sum<7>(score, inv, n, vg + c, row, o + c); break;
      case 6: weighted_sum<6>(score, inv, n, vg + c, row, o + c); break;
      case 5: weighted_sum<5>(score, inv, n, vg + c, row, o + c); break;
      case 4: weighted_sum<4>(score, inv, n, vg + c, row, o + c); break;
      case 3: weighted_sum<3>(score, inv, n, vg + c, row, o + c); break;
      case 2: weighted_sum<2>(score, inv, n, vg + c, row, o + c); break;
      case 1: weighted_sum<1>(score, inv, n, vg + c, row, o + c); break;
      default: break;
    }
    for (c += (d - c) / 8 * 8; c < d; ++c) {
      float acc = 0;
      for (int64_t j = 0; j < n; ++j) acc += score[j] * inv * vg[j * row + c];
      o[c] = acc;
    }
  }
}

}  // namespace moe::kernels::cpu
