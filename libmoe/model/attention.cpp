#include "model/attention.h"

#include <cmath>

#include "kernels/ops.h"

namespace moe::model {

namespace {

ops::VarlenAttention varlen(const Context& ctx, const ModelConfig& c, const Batch& b) {
  return {ctx.local.heads,     ctx.local.query_groups,
          c.kv_channels,       float(1.0 / std::sqrt(double(c.kv_channels))),
          b.cu_seqlens.data(), int64_t(b.cu_seqlens.size()) - 1};
}

bool has(const Tensor& t) { return t.defined() && t.numel() > 0; }

}  // namespace

void attention_forward(const Context& ctx, const ModelConfig& c, const AttentionWeights& w, int layer, const float* x,
                       const Batch& b, const RopeTable& rope, AttentionSaved& s, float* y) {
  const Backend& be = ctx.backend;
  const int64_t T = b.size(), nh = ctx.local.heads, ng = ctx.local.query_groups, d = c.kv_channels;
  const int64_t rows = ng * (nh / ng + 2) * d;
  s.qkv.resize(size_t(T * rows));
  ops::linear(be, x, T, w.qkv, has(w.qkv_bias) ? w.qkv_bias.f32() : nullptr, s.qkv.data());
  s.q.resize(size_t(T * nh * d)), s.k.resize(size_t(T * ng * d)), s.v.resize(size_t(T * ng * d));
  ops::qkv_split(be, s.qkv.data(), T, nh, ng, d, s.q.data(), s.k.data(), s.v.data());
  if (c.qk_layernorm) {
    const float eps = float(c.norm_epsilon);
    ops::rmsnorm(be, s.q.data(), T * nh, d, w.q_norm.f32(), eps, s.q.data());
    ops::rmsnorm(be, s.k.data(), T * ng, d, w.k_norm.f32(), eps, s.k.data());
  }
  ops::rope(be, s.q.data(), T, nh, d, b.positions.data(), rope.cos(), rope.sin());
  ops::rope(be, s.k.data(), T, ng, d, b.positions.data(), rope.cos(), rope.sin());
  s.out.resize(size_t(T * nh * d));
  const int64_t pos0 = b.cache ? b.cache->length() : 0;
  if (b.cache) {  // the new keys and values join the cache
    ops::copy(be, b.cache->keys(layer) + pos0 * ng * d, s.k.data(), T * ng * d);
    ops::copy(be, b.cache->values(layer) + pos0 * ng * d, s.v.data(), T * ng * d);
  }
  if (pos0 == 0) {
    // No earlier positions: the packed-sequence kernel training uses, so a prompt's logits are
    // bitwise those of the training forward.
    s.lse.resize(size_t(T * nh));
    ops::attention_varlen(be, varlen(ctx, c, b), s.q.data(), s.k.data(), s.v.data(), s.out.data(), s.lse.data());
  } else {
    const ops::AttentionShape shape{T, pos0, nh, ng, d, float(1.0 / std::sqrt(double(d)))};
    ops::causal_attention(be, shape, s.q.data(), b.cache->keys(layer), b.cache->values(layer), s.out.data());
  }
  ops::linear(be, s.out.data(), T, w.proj, nullptr, y);
}

void attention_backward(const Context& ctx, const ModelConfig& c, const AttentionWeights& w, AttentionWeights& g,
                        const float* x, const Batch& b, const RopeTable& rope, const AttentionSaved& s, const float* dy,
                        float* dx) {
  const Backend& be = ctx.backend;
  const int64_t T = b.size(), D = c.hidden_size, nh = ctx.local.heads, ng = ctx.local.query_groups;
  const int64_t d = c.kv_channels, rows = ng * (nh / ng + 2) * d;
  ops::linear_backward_weight(be, dy, s.out.data(), T, D, nh * d, g.proj.f32());
  std::vector<float> dout(static_cast<size_t>(T * nh * d));
  ops::linear_backward_input(be, dy, T, w.proj.f32(), D, nh * d, dout.data(), false);
  std::vector<float> dq(s.q.size()), dk(s.k.size()), dv(s.v.size());
  ops::attention_varlen_backward(be, varlen(ctx, c, b), s.q.data(), s.k.data(), s.v.data(), s.out.data(), s.lse.data(),
                                 dout.data(), dq.data(), dk.data(), dv.data());
  ops::rope_backward(be, dq.data(), T, nh, d, b.positions.data(), rope.cos(), rope.sin());
  ops::rope_backward(be, dk.data(), T, ng, d, b.positions.data(), rope.cos(), rope.sin());
  if (c.qk_layernorm) {
    // The norms' inputs are the raw projections, still in the saved qkv buffer.
    std::vector<float> q_raw(s.q.size()), k_raw(s.k.size()), v_unused(s.v.size());
    ops::qkv_split(be, s.qkv.data(), T, nh, ng, d, q_raw.data(), k_raw.data(), v_unused.data());
    const float eps = float(c.norm_epsilon);
    ops::rmsnorm_backward(be, q_raw.data(), T * nh, d, w.q_norm.f32(), eps, dq.data(), dq.data(), g.q_norm.f32());
    ops::rmsnorm_backward(be, k_raw.data(), T * ng, d, w.k_norm.f32(), eps, dk.data(), dk.data(), g.k_norm.f32());
  }
  std::vector<float> dqkv(static_cast<size_t>(T * rows));
  ops::qkv_merge(be, dq.data(), dk.data(), dv.data(), T, nh, ng, d, dqkv.data());
  if (has(w.qkv_bias)) ops::bias_backward(be, dqkv.data(), T, rows, g.qkv_bias.f32());
  ops::linear_backward_weight(be, dqkv.data(), x, T, rows, D, g.qkv.f32());
  ops::linear_backward_input(be, dqkv.data(), T, w.qkv.f32(), rows, D, dx, false);
}

}  // namespace moe::model
