#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <cblas.h>

#include "core/cpu_features.h"
#include "core/parallel.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/vexp.h"

namespace moe::kernels::cpu {

namespace {

// Many query tokens (prefill): per head, scores = Q Kᵀ and out = P V as two sgemms over the
// strided head slices, with the causal mask and softmax in between.
void attention_gemm(const AttentionShape& s, const float* q, const float* k, const float* v, float* out) {
  const int64_t r = s.nh / s.ng, d = s.d;
  sgemm_single_threaded();
  // Queries go in blocks of 128 so that a block only multiplies the keys it can see (the
  // causal upper triangle beyond the block is never computed).
  constexpr int64_t kBlock = 128;
  parallel_for(s.nh, [&](int64_t hb, int64_t he) {
    thread_local std::vector<float> P;  // reused across calls
    for (int64_t h = hb; h < he; ++h) {
      const int64_t g = h / r;
      for (int64_t t0 = 0; t0 < s.T; t0 += kBlock) {
        const int64_t tc = std::min(kBlock, s.T - t0), Sc = s.pos0 + t0 + tc;
        P.resize(static_cast<size_t>(tc * Sc));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(tc), int(Sc), int(d), s.scale,
                    q + t0 * s.nh * d + h * d, int(s.nh * d), k + g * d, int(s.ng * d), 0.0f, P.data(), int(Sc));
        for (int64_t t = 0; t < tc; ++t) {
          float* p = P.data() + t * Sc;
          const int64_t n = s.pos0 + t0 + t + 1;
          const float m = *std::max_element(p, p + n);
          const float inv = float(1.0 / exp_shift_sum(p, n, m));
          for (int64_t j = 0; j < n; ++j) p[j] *= inv;
          std::fill(p + n, p + Sc, 0.0f);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(tc), int(d), int(Sc), 1.0f, P.data(), int(Sc),
                    v + g * d, int(s.ng * d), 0.0f, out + t0 * s.nh * d + h * d, int(s.nh * d));
      }
    }
  });
}

}  // namespace

void causal_attention(const AttentionShape& s, const float* q_THd, const float* k_SGd, const float* v_SGd,
                      float* out_THd) {
  if (s.T >= 16) {
    attention_gemm(s, q_THd, k_SGd, v_SGd, out_THd);
    return;
  }
  const int64_t r = s.nh / s.ng, d = s.d, row = s.ng * d;
  // One (token, head) pair per work item; scores live in a per-thread buffer kept across calls
  // (decode allocates nothing per token). A short context runs on the calling thread: a parallel
  // region per layer costs more than the work, and each one stalls when a core is busy elsewhere.
  auto body = [&](int64_t b, int64_t e) {
    thread_local std::vector<float> score;
    if (score.size() < size_t(s.pos0 + s.T)) score.resize(size_t(s.pos0 + s.T));
    if (cpu_has_avx2_fma_f16c()) return attend_decode_avx2(s, q_THd, k_SGd, v_SGd, out_THd, b, e, score.data());
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
  };
  const int64_t work = s.T * s.nh * (s.pos0 + s.T) * d;
  if (work < (int64_t(1) << 16)) body(0, s.T * s.nh);
  else parallel_for(s.T * s.nh, body);
}

}  // namespace moe::kernels::cpu
