#include "kernels/cpu/attention_varlen.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/parallel.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/vexp.h"

namespace moe::kernels::cpu {

namespace {

// One work item is (sequence, kv group): the group's query heads run one after another, so the
// key/value gradients of a group are written by one thread only.
template <class F>
void for_each_seq_group(const VarlenAttention& a, F&& fn) {
  sgemm_single_threaded();
  std::vector<int64_t> cost(static_cast<size_t>(a.num_seqs * a.ng));
  for (int64_t s = 0; s < a.num_seqs; ++s) {
    const int64_t L = a.cu_seqlens[s + 1] - a.cu_seqlens[s];
    for (int64_t g = 0; g < a.ng; ++g) cost[size_t(s * a.ng + g)] = L * L + 1;
  }
  parallel_items(cost, [&](int64_t i) { fn(i / a.ng, i % a.ng); });
}

// P[L, L] = causal softmax(scale · q_h k_gᵀ), rows given their log-sum-exp (computed if lse_in
// is null and written to lse_out).
void probabilities(const VarlenAttention& a, int64_t L, const float* qh, const float* kg, const float* lse_in,
                   float* lse_out, float* P) {
  const int64_t ldq = a.nh * a.d, ldk = a.ng * a.d;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(L), int(L), int(a.d), a.scale, qh, int(ldq), kg, int(ldk),
              0.0f, P, int(L));
  for (int64_t i = 0; i < L; ++i) {
    float* p = P + i * L;
    if (lse_in) {
      exp_shift_sum(p, i + 1, lse_in[i * a.nh]);  // p <- exp(p - lse)
    } else {
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j <= i; ++j) m = std::max(m, p[j]);
      const double s = exp_shift_sum(p, i + 1, m);  // p <- exp(p - m), vectorised
      lse_out[i * a.nh] = m + float(std::log(s));
      const float inv = float(1.0 / s);
      for (int64_t j = 0; j <= i; ++j) p[j] *= inv;
    }
    std::fill(p + i + 1, p + L, 0.0f);
  }
}

}  // namespace

void attention_varlen_forward(const VarlenAttention& a, const float* q, const float* k, const float* v, float* out,
                              float* lse) {
  const int64_t r = a.nh / a.ng, ldq = a.nh * a.d, ldk = a.ng * a.d;
  for_each_seq_group(a, [&](int64_t s, int64_t g) {
    const int64_t t0 = a.cu_seqlens[s], L = a.cu_seqlens[s + 1] - t0;
    thread_local std::vector<float> P;
    P.resize(size_t(L * L));
    for (int64_t h = g * r; h < (g + 1) * r; ++h) {
      probabilities(a, L, q + t0 * ldq + h * a.d, k + t0 * ldk + g * a.d, nullptr, lse + t0 * a.nh + h, P.data());
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(L), int(a.d), int(L), 1.0f, P.data(), int(L),
                  v + t0 * ldk + g * a.d, int(ldk), 0.0f, out + t0 * ldq + h * a.d, int(ldq));
    }
  });
}

void attention_varlen_backward(const VarlenAttention& a, const float* q, const float* k, const float* v,
                               const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv) {
  const int64_t r = a.nh / a.ng, ldq = a.nh * a.d, ldk = a.ng * a.d;
  for_each_seq_group(a, [&](int64_t s, int64_t g) {
    const int64_t t0 = a.cu_seqlens[s], L = a.cu_seqlens[s + 1] - t0;
    thread_local std::vector<float> P, dP;
    P.resize(size_t(L * L)), dP.resize(size_t(L * L));
    float* dkg = dk + t0 * ldk + g * a.d;
    float* dvg = dv + t0 * ldk + g * a.d;
    for (int64_t i = 0; i < L; ++i) {
      std::memset(dkg + i * ldk, 0, size_t(a.d) * sizeof(float));
      std::memset(dvg + i * ldk, 0, size_t(a.d) * sizeof(float));
    }
    const float* kg = k + t0 * ldk + g * a.d;
    const float* vg = v + t0 * ldk + g * a.d;
    for (int64_t h = g * r; h < (g + 1) * r; ++h) {
      const float* qh = q + t0 * ldq + h * a.d;
      const float* oh = out + t0 * ldq + h * a.d;
      const float* doh = dout + t0 * ldq + h * a.d;
      probabilities(a, L, qh, kg, lse + t0 * a.nh + h, nullptr, P.data());
      // dv += Pᵀ dO; dP = dO vᵀ
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(L), int(a.d), int(L), 1.0f, P.data(), int(L), doh,
                  int(ldq), 1.0f, dvg, int(ldk));
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(L), int(L), int(a.d), 1.0f, doh, int(ldq), vg, int(ldk),
                  0.0f, dP.data(), int(L));
      // dS = P ∘ (dP − rowsum(dO ∘ O)), scaled here once for both dq and dk.
      for (int64_t i = 0; i < L; ++i) {
        double di = 0;
        for (int64_t j = 0; j < a.d; ++j) di += double(doh[i * ldq + j]) * oh[i * ldq + j];
        float* ds = dP.data() + i * L;
        const float* p = P.data() + i * L;
        for (int64_t j = 0; j <= i; ++j) ds[j] = a.scale * p[j] * (ds[j] - float(di));
        std::fill(ds + i + 1, ds + L, 0.0f);
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(L), int(a.d), int(L), 1.0f, dP.data(), int(L), kg,
                  int(ldk), 0.0f, dq + t0 * ldq + h * a.d, int(ldq));
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(L), int(a.d), int(L), 1.0f, dP.data(), int(L), qh,
                  int(ldq), 1.0f, dkg, int(ldk));
    }
  });
}

}  // namespace moe::kernels::cpu
