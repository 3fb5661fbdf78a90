#include "model/attention.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/linear.h"

namespace moe::model {

void attention_forward(const ModelConfig& c, const AttentionWeights& w, int layer, const float* x_TD, int64_t T,
                       KvCache& cache, const RopeTable& rope, float* y_TD) {
  namespace k = kernels::cpu;
  const int64_t nh = c.num_attention_heads, ng = c.num_query_groups, d = c.kv_channels, r = nh / ng;
  const int64_t rows = c.qkv_rows(), pos0 = cache.length();
  thread_local std::vector<float> qkv, q, out;  // reused across calls (see Transformer::forward)
  qkv.resize(size_t(T * rows)), q.resize(size_t(T * nh * d)), out.resize(size_t(T * nh * d));
  k::linear(x_TD, T, w.qkv, w.qkv_bias.defined() && w.qkv_bias.numel() ? w.qkv_bias.f32() : nullptr, qkv.data());

  // Split the per-group rows [q (r heads); k; v] into q [T, nh, d] and the cache's k, v [S, ng, d].
  float* kc = cache.keys(layer) + pos0 * ng * d;
  float* vc = cache.values(layer) + pos0 * ng * d;
  for (int64_t t = 0; t < T; ++t) {
    const float* src = qkv.data() + t * rows;
    for (int64_t g = 0; g < ng; ++g) {
      const float* grp = src + g * (r + 2) * d;
      std::memcpy(q.data() + (t * nh + g * r) * d, grp, size_t(r * d) * 4);
      std::memcpy(kc + (t * ng + g) * d, grp + r * d, size_t(d) * 4);
      std::memcpy(vc + (t * ng + g) * d, grp + (r + 1) * d, size_t(d) * 4);
    }
  }
  if (c.qk_layernorm) {
    const float eps = float(c.norm_epsilon);
    k::rmsnorm(q.data(), T * nh, d, w.q_norm.f32(), eps, q.data());
    k::rmsnorm(kc, T * ng, d, w.k_norm.f32(), eps, kc);
  }
  std::vector<int32_t> pos(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) pos[size_t(t)] = int32_t(pos0 + t);
  k::rope_apply(q.data(), T, nh, d, pos.data(), rope.cos(), rope.sin());
  k::rope_apply(kc, T, ng, d, pos.data(), rope.cos(), rope.sin());

  k::AttentionShape s{T, pos0, nh, ng, d, float(1.0 / std::sqrt(double(d)))};
  k::causal_attention(s, q.data(), cache.keys(layer), cache.values(layer), out.data());
  k::linear(out.data(), T, w.proj, nullptr, y_TD);
}

}  // namespace moe::model
