#include "model/attention_train.h"

#include <cmath>
#include <cstring>

#include "kernels/cpu/attention_varlen.h"
#include "kernels/cpu/backward.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gemm.h"

namespace moe::model {

namespace k = kernels::cpu;

namespace {

k::VarlenAttention varlen(const ModelConfig& c, const PackedPositions& pos) {
  return {c.num_attention_heads, c.num_query_groups, c.kv_channels, float(1.0 / std::sqrt(double(c.kv_channels))),
          pos.cu_seqlens.data(), int64_t(pos.cu_seqlens.size()) - 1};
}

// Copies each group's [q (r heads); k; v] rows of a [T, qkv_rows] buffer to or from separate
// q [T, nh, d], k and v [T, ng, d] buffers.
template <bool kSplit>
void qkv_layout(const ModelConfig& c, int64_t T, std::conditional_t<kSplit, const float*, float*> qkv,
                std::conditional_t<kSplit, float*, const float*> q, std::conditional_t<kSplit, float*, const float*> kk,
                std::conditional_t<kSplit, float*, const float*> v) {
  const int64_t nh = c.num_attention_heads, ng = c.num_query_groups, d = c.kv_channels, r = nh / ng;
  const int64_t rows = c.qkv_rows();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t g = 0; g < ng; ++g) {
      auto grp = qkv + t * rows + g * (r + 2) * d;
      auto qd = q + (t * nh + g * r) * d;
      auto kd = kk + (t * ng + g) * d;
      auto vd = v + (t * ng + g) * d;
      const size_t qn = size_t(r * d) * sizeof(float), kn = size_t(d) * sizeof(float);
      if constexpr (kSplit) {
        std::memcpy(qd, grp, qn), std::memcpy(kd, grp + r * d, kn), std::memcpy(vd, grp + (r + 1) * d, kn);
      } else {
        std::memcpy(grp, qd, qn), std::memcpy(grp + r * d, kd, kn), std::memcpy(grp + (r + 1) * d, vd, kn);
      }
    }
}

}  // namespace

void attention_train_forward(const ModelConfig& c, const AttentionWeights& w, const float* x, int64_t T,
                             const PackedPositions& pos, const RopeTable& rope, AttentionSaved& s, float* y) {
  const int64_t D = c.hidden_size, nh = c.num_attention_heads, ng = c.num_query_groups, d = c.kv_channels;
  const int64_t rows = c.qkv_rows();
  s.qkv.resize(size_t(T * rows));
  k::gemm_nt(T, rows, D, x, w.qkv.f32(), s.qkv.data(), false);
  if (c.add_qkv_bias)
    for (int64_t t = 0; t < T; ++t) k::add_inplace(s.qkv.data() + t * rows, w.qkv_bias.f32(), rows);
  s.q.resize(size_t(T * nh * d)), s.k.resize(size_t(T * ng * d)), s.v.resize(size_t(T * ng * d));
  qkv_layout<true>(c, T, s.qkv.data(), s.q.data(), s.k.data(), s.v.data());
  if (c.qk_layernorm) {
    const float eps = float(c.norm_epsilon);
    k::rmsnorm(s.q.data(), T * nh, d, w.q_norm.f32(), eps, s.q.data());
    k::rmsnorm(s.k.data(), T * ng, d, w.k_norm.f32(), eps, s.k.data());
  }
  k::rope_apply(s.q.data(), T, nh, d, pos.position_ids.data(), rope.cos(), rope.sin());
  k::rope_apply(s.k.data(), T, ng, d, pos.position_ids.data(), rope.cos(), rope.sin());
  s.out.resize(size_t(T * nh * d)), s.lse.resize(size_t(T * nh));
  k::attention_varlen_forward(varlen(c, pos), s.q.data(), s.k.data(), s.v.data(), s.out.data(), s.lse.data());
  k::gemm_nt(T, D, nh * d, s.out.data(), w.proj.f32(), y, false);
}

void attention_train_backward(const ModelConfig& c, const AttentionWeights& w, AttentionWeights& g, const float* x,
                              int64_t T, const PackedPositions& pos, const RopeTable& rope, const AttentionSaved& s,
                              const float* dy, float* dx) {
  const int64_t D = c.hidden_size, nh = c.num_attention_heads, ng = c.num_query_groups, d = c.kv_channels;
  const int64_t rows = c.qkv_rows();
  k::gemm_tn(D, nh * d, T, dy, s.out.data(), g.proj.f32(), true);  // dproj += dyᵀ out
  std::vector<float> dout(static_cast<size_t>(T * nh * d));
  k::gemm_nn(T, nh * d, D, dy, w.proj.f32(), dout.data(), false);
  std::vector<float> dq(s.q.size()), dk(s.k.size()), dv(s.v.size());
  k::attention_varlen_backward(varlen(c, pos), s.q.data(), s.k.data(), s.v.data(), s.out.data(), s.lse.data(),
                               dout.data(), dq.data(), dk.data(), dv.data());
  k::rope_apply_backward(dq.data(), T, nh, d, pos.position_ids.data(), rope.cos(), rope.sin());
  k::rope_apply_backward(dk.data(), T, ng, d, pos.position_ids.data(), rope.cos(), rope.sin());
  if (c.qk_layernorm) {
    // The norms' inputs are the raw projections, still in the saved qkv buffer.
    std::vector<float> q_raw(s.q.size()), k_raw(s.k.size()), v_unused(s.v.size());
    qkv_layout<true>(c, T, s.qkv.data(), q_raw.data(), k_raw.data(), v_unused.data());
    const float eps = float(c.norm_epsilon);
    k::rmsnorm_backward(q_raw.data(), T * nh, d, w.q_norm.f32(), eps, dq.data(), dq.data(), g.q_norm.f32());
    k::rmsnorm_backward(k_raw.data(), T * ng, d, w.k_norm.f32(), eps, dk.data(), dk.data(), g.k_norm.f32());
  }
  std::vector<float> dqkv(static_cast<size_t>(T * rows));
  qkv_layout<false>(c, T, dqkv.data(), dq.data(), dk.data(), dv.data());
  if (c.add_qkv_bias) {
    float* db = g.qkv_bias.f32();
    for (int64_t t = 0; t < T; ++t) k::add_inplace(db, dqkv.data() + t * rows, rows);
  }
  k::gemm_tn(rows, D, T, dqkv.data(), x, g.qkv.f32(), true);
  k::gemm_nn(T, D, rows, dqkv.data(), w.qkv.f32(), dx, false);
}

}  // namespace moe::model
