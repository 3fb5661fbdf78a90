#include "kernels/cpu/attention_varlen.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/parallel.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/vexp.h"

namespace moe::kernels::cpu {

namespace {

// Queries go in blocks of kBlock rows; a block only meets the keys it can see (positions up to
// its last row), so the masked upper triangle beyond the block is never multiplied. Halves the
// work of a long sequence against the square L x L product.
constexpr int64_t kBlock = 128;

// Sequence s's query rows [q0, q0 + Lq) and key rows [k0, k0 + Lk) of the packed buffers.
struct Seq {
  int64_t q0, Lq, k0, Lk;
};
Seq sequence(const VarlenAttention& a, int64_t s) {
  const int64_t q0 = a.cu_seqlens[s], Lq = a.cu_seqlens[s + 1] - q0;
  if (!a.cu_seqlens_k) return {q0, Lq, q0, Lq};
  return {q0, Lq, a.cu_seqlens_k[s], a.cu_seqlens_k[s + 1] - a.cu_seqlens_k[s]};
}
// The keys query row i of a sequence (its row in the packed buffer: q0 + i) sees.
int64_t keys_seen(const VarlenAttention& a, const Seq& q, int64_t i) {
  return (a.q_pos ? int64_t(a.q_pos[q.q0 + i]) : i) + 1;
}

// One work item is (sequence, kv group): the group's query heads run one after another, so the
// key/value gradients of a group are written by one thread only.
template <class F>
void for_each_seq_group(const VarlenAttention& a, F&& fn) {
  sgemm_single_threaded();
  std::vector<int64_t> cost(static_cast<size_t>(a.num_seqs * a.ng));
  for (int64_t s = 0; s < a.num_seqs; ++s) {
    const Seq q = sequence(a, s);
    for (int64_t g = 0; g < a.ng; ++g) cost[size_t(s * a.ng + g)] = q.Lq * q.Lk + 1;
  }
  parallel_items(cost, [&](int64_t i) { fn(i / a.ng, i % a.ng); });
}

// P[tc, Sc] = causal softmax(scale · q kᵀ) for the query rows t0 .. t0+tc-1 of a sequence
// (qh points at row t0) against its keys 0 .. Sc-1 (Sc: what the block's last row sees). Rows
// are normalised by their log-sum-exp, given (lse_in) or computed and written (lse_out); both
// point at row t0.
void probabilities(const VarlenAttention& a, const Seq& q, int64_t t0, int64_t tc, int64_t Sc, const float* qh,
                   const float* kg, const float* lse_in, float* lse_out, float* P) {
  const int64_t ldq = a.nh * a.d, ldk = a.ng * a.d;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(tc), int(Sc), int(a.d), a.scale, qh, int(ldq), kg, int(ldk),
              0.0f, P, int(Sc));
  for (int64_t i = 0; i < tc; ++i) {
    float* p = P + i * Sc;
    const int64_t n = keys_seen(a, q, t0 + i);
    if (lse_in) {
      exp_shift_sum(p, n, lse_in[i * a.nh]);  // p <- exp(p - lse)
    } else {
      const float m = max_value(p, n);
      const double s = exp_shift_sum(p, n, m);  // p <- exp(p - m), vectorised
      lse_out[i * a.nh] = m + float(std::log(s));
      const float inv = float(1.0 / s);
      for (int64_t j = 0; j < n; ++j) p[j] *= inv;
    }
    std::fill(p + n, p + Sc, 0.0f);
  }
}

}  // namespace

void attention_varlen_forward(const VarlenAttention& a, const float* q, const float* k, const float* v, float* out,
                              float* lse) {
  const int64_t r = a.nh / a.ng, ldq = a.nh * a.d, ldk = a.ng * a.d;
  for_each_seq_group(a, [&](int64_t s, int64_t g) {
    const Seq sq = sequence(a, s);
    thread_local std::vector<float> P;
    P.resize(size_t(std::min(sq.Lq, kBlock) * sq.Lk));
    const float* kg = k + sq.k0 * ldk + g * a.d;
    const float* vg = v + sq.k0 * ldk + g * a.d;
    for (int64_t h = g * r; h < (g + 1) * r; ++h) {
      for (int64_t t0 = 0; t0 < sq.Lq; t0 += kBlock) {
        const int64_t tc = std::min(kBlock, sq.Lq - t0), Sc = keys_seen(a, sq, t0 + tc - 1), row = sq.q0 + t0;
        probabilities(a, sq, t0, tc, Sc, q + row * ldq + h * a.d, kg, nullptr, lse + row * a.nh + h, P.data());
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(tc), int(a.d), int(Sc), 1.0f, P.data(), int(Sc), vg,
                    int(ldk), 0.0f, out + row * ldq + h * a.d, int(ldq));
      }
    }
  });
}

void attention_varlen_backward(const VarlenAttention& a, const float* q, const float* k, const float* v,
                               const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv) {
  const int64_t r = a.nh / a.ng, ldq = a.nh * a.d, ldk = a.ng * a.d;
  for_each_seq_group(a, [&](int64_t s, int64_t g) {
    const Seq sq = sequence(a, s);
    thread_local std::vector<float> P, dP;
    P.resize(size_t(std::min(sq.Lq, kBlock) * sq.Lk)), dP.resize(P.size());
    float* dkg = dk + sq.k0 * ldk + g * a.d;
    float* dvg = dv + sq.k0 * ldk + g * a.d;
    for (int64_t i = 0; i < sq.Lk; ++i) {
      std::memset(dkg + i * ldk, 0, size_t(a.d) * sizeof(float));
      std::memset(dvg + i * ldk, 0, size_t(a.d) * sizeof(float));
    }
    const float* kg = k + sq.k0 * ldk + g * a.d;
    const float* vg = v + sq.k0 * ldk + g * a.d;
    for (int64_t h = g * r; h < (g + 1) * r; ++h) {
      for (int64_t t0 = 0; t0 < sq.Lq; t0 += kBlock) {
        // The block's rows t0 .. t0+tc-1 against keys 0 .. Sc-1.
        const int64_t tc = std::min(kBlock, sq.Lq - t0), Sc = keys_seen(a, sq, t0 + tc - 1), row = sq.q0 + t0;
        const float* qh = q + row * ldq + h * a.d;
        const float* oh = out + row * ldq + h * a.d;
        const float* doh = dout + row * ldq + h * a.d;
        probabilities(a, sq, t0, tc, Sc, qh, kg, lse + row * a.nh + h, nullptr, P.data());
        // dv += Pᵀ dO; dP = dO vᵀ
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(Sc), int(a.d), int(tc), 1.0f, P.data(), int(Sc), doh,
                    int(ldq), 1.0f, dvg, int(ldk));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(tc), int(Sc), int(a.d), 1.0f, doh, int(ldq), vg,
                    int(ldk), 0.0f, dP.data(), int(Sc));
        // dS = P ∘ (dP − rowsum(dO ∘ O)), scaled here once for both dq and dk.
        for (int64_t i = 0; i < tc; ++i) {
          double di = 0;
          for (int64_t j = 0; j < a.d; ++j) di += double(doh[i * ldq + j]) * oh[i * ldq + j];
          float* ds = dP.data() + i * Sc;
          const float* p = P.data() + i * Sc;
          const int64_t n = keys_seen(a, sq, t0 + i);
          for (int64_t j = 0; j < n; ++j) ds[j] = a.scale * p[j] * (ds[j] - float(di));
          std::fill(ds + n, ds + Sc, 0.0f);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(tc), int(a.d), int(Sc), 1.0f, dP.data(), int(Sc), kg,
                    int(ldk), 0.0f, dq + row * ldq + h * a.d, int(ldq));
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(Sc), int(a.d), int(tc), 1.0f, dP.data(), int(Sc), qh,
                    int(ldq), 1.0f, dkg, int(ldk));
      }
    }
  });
}

}  // namespace moe::kernels::cpu
