#include "model/attention.h"

#include <cmath>

#include "kernels/ops.h"
#include "model/context_parallel.h"

namespace moe::model {

namespace {

ops::VarlenAttention varlen(const Context& ctx, const ModelConfig& c, const Batch& b) {
  return {ctx.local.heads,
          ctx.local.query_groups,
          c.kv_channels,
          float(1.0 / std::sqrt(double(c.kv_channels))),
          op_index(b).cu_seqlens.data(),
          int64_t(b.cu_seqlens.size()) - 1};
}

// Context parallelism: this rank's queries against the whole sequences' keys, causal on the
// queries' positions in their sequences.
ops::VarlenAttention varlen_whole_keys(const Context& ctx, const ModelConfig& c, const Batch& b) {
  ops::VarlenAttention a = varlen(ctx, c, b);
  a.cu_seqlens_k = b.cp_cu_seqlens.data(), a.q_pos = b.positions.data();
  return a;
}

bool has(const Tensor& t) { return t.defined() && t.numel() > 0; }

// The attention of one micro-batch's (or one sequence's) rotated q, k, v: over the sequence itself
// when nothing is cached (the packed kernel training uses), else over the cache they join.
void attend(const Context& ctx, const ModelConfig& c, int layer, const Batch& b, const float* q, const float* k,
            const float* v, float* out, float* lse) {
  const Backend& be = ctx.backend;
  const int64_t T = b.size(), nh = ctx.local.heads, ng = ctx.local.query_groups, d = c.kv_channels;
  const int64_t pos0 = b.cache ? b.cache->length() : 0;
  if (b.cache) {  // the new keys and values join the cache
    ops::copy(be, b.cache->keys(layer) + pos0 * ng * d, k, T * ng * d);
    ops::copy(be, b.cache->values(layer) + pos0 * ng * d, v, T * ng * d);
  }
  if (cp_split(ctx, b)) {  // this rank's queries against every CP rank's keys and values, gathered
    ArenaScope scope(*ctx.workspace);
    const auto x = carve_cp_attention_scratch(*ctx.workspace, T, b.cp_cu_seqlens.back(), cp_size(ctx), ng, d, false);
    cp_gather_rows(ctx, b, k, ng * d, x, x.k.data());
    cp_gather_rows(ctx, b, v, ng * d, x, x.v.data());
    ops::attention_varlen(be, varlen_whole_keys(ctx, c, b), q, x.k.data(), x.v.data(), out, lse);
  } else if (pos0 == 0 && (!b.cache || be.host_memory())) {
    // No earlier positions: the packed-sequence kernel training uses, so a prompt's logits are
    // bitwise those of the training forward. (On a device a prompt joining a cache goes through
    // the cache's kernel, which needs no cu_seqlens in device memory: one row of a batch has none.)
    ops::attention_varlen(be, varlen(ctx, c, b), q, k, v, out, lse);
  } else {
    const ops::AttentionShape shape{T, pos0, nh, ng, d, float(1.0 / std::sqrt(double(d)))};
    ops::causal_attention(be, shape, q, b.cache->keys(layer), b.cache->values(layer), out);
  }
}

}  // namespace

AttentionSaved carve_attention_saved(Arena& keep, int64_t T, int64_t nh, int64_t ng, int64_t d) {
  AttentionSaved s;
  s.qkv = keep.take<float>(size_t(T * ng * (nh / ng + 2) * d));
  s.q = keep.take<float>(size_t(T * nh * d));
  s.k = keep.take<float>(size_t(T * ng * d));
  s.v = keep.take<float>(size_t(T * ng * d));
  s.out = keep.take<float>(size_t(T * nh * d));
  s.lse = keep.take<float>(size_t(T * nh));
  return s;
}

AttentionScratch carve_attention_backward_scratch(Arena& ws, int64_t T, int64_t nh, int64_t ng, int64_t d,
                                                  bool qk_layernorm, bool tp) {
  AttentionScratch s;
  s.dout = ws.take<float>(size_t(T * nh * d));
  s.dq = ws.take<float>(size_t(T * nh * d));
  s.dk = ws.take<float>(size_t(T * ng * d));
  s.dv = ws.take<float>(size_t(T * ng * d));
  if (qk_layernorm) {
    s.q_raw = ws.take<float>(size_t(T * nh * d));
    s.k_raw = ws.take<float>(size_t(T * ng * d));
    s.v_unused = ws.take<float>(size_t(T * ng * d));
  }
  s.dqkv = ws.take<float>(size_t(T * ng * (nh / ng + 2) * d));
  if (qk_layernorm && tp) s.dnorms_2d = ws.take<float>(size_t(2 * d));
  return s;
}

void attention_forward(const Context& ctx, const ModelConfig& c, const AttentionWeights& w, int layer, const float* x,
                       const Batch& b, const RopeTable& rope, Arena& keep, AttentionSaved& s, float* y) {
  const Backend& be = ctx.backend;
  const int64_t T = b.size(), nh = ctx.local.heads, ng = ctx.local.query_groups, d = c.kv_channels;
  s = carve_attention_saved(keep, T, nh, ng, d);
  ops::linear(be, x, T, w.qkv, has(w.qkv_bias) ? w.qkv_bias.f32() : nullptr, s.qkv.data());
  ops::qkv_split(be, s.qkv.data(), T, nh, ng, d, s.q.data(), s.k.data(), s.v.data());
  if (c.qk_layernorm) {
    const float eps = float(c.norm_epsilon);
    ops::rmsnorm(be, s.q.data(), T * nh, d, w.q_norm.f32(), eps, s.q.data());
    ops::rmsnorm(be, s.k.data(), T * ng, d, w.k_norm.f32(), eps, s.k.data());
  }
  const int32_t* pos = op_index(b).positions.data();
  ops::rope(be, s.q.data(), T, nh, d, pos, rope.cos(), rope.sin());
  ops::rope(be, s.k.data(), T, ng, d, pos, rope.cos(), rope.sin());
  if (!b.caches.empty()) {  // batched decode: each sequence against its own cache
    for (size_t q = 0; q + 1 < b.cu_seqlens.size(); ++q) {
      const int64_t t0 = b.cu_seqlens[q], n = b.cu_seqlens[q + 1] - t0;
      KvStore& kv = *b.caches[q];
      const int32_t seq[2] = {0, int32_t(n)};
      const Batch one{
          b.tokens.subspan(size_t(t0), size_t(n)), b.positions.subspan(size_t(t0), size_t(n)), seq, {}, &kv};
      attend(ctx, c, layer, one, s.q.data() + t0 * nh * d, s.k.data() + t0 * ng * d, s.v.data() + t0 * ng * d,
             s.out.data() + t0 * nh * d, s.lse.data() + t0 * nh);
    }
  } else {
    attend(ctx, c, layer, b, s.q.data(), s.k.data(), s.v.data(), s.out.data(), s.lse.data());
  }
  ops::linear(be, s.out.data(), T, w.proj, nullptr, y);
}

void attention_backward(const Context& ctx, const ModelConfig& c, const AttentionWeights& w, AttentionWeights& g,
                        const float* x, const Batch& b, const RopeTable& rope, const AttentionSaved& s, const float* dy,
                        float* dx) {
  const Backend& be = ctx.backend;
  const int64_t T = b.size(), D = c.hidden_size, nh = ctx.local.heads, ng = ctx.local.query_groups;
  const int64_t d = c.kv_channels, rows = ng * (nh / ng + 2) * d;
  ArenaScope scope(*ctx.workspace);
  const bool tp = tp_size(ctx) > 1;
  const AttentionScratch t = carve_attention_backward_scratch(*ctx.workspace, T, nh, ng, d, c.qk_layernorm, tp);
  ops::linear_backward_weight(be, dy, s.out.data(), T, D, nh * d, g.proj.f32());
  ops::linear_backward_input(be, dy, T, w.proj.f32(), D, nh * d, t.dout.data(), false);
  if (cp_split(ctx, b)) {
    // The whole keys and values gathered again (Megatron's all_gather CP keeps only this rank's),
    // and their gradients, which every rank computed for every row, summed back to their owners.
    const auto x = carve_cp_attention_scratch(*ctx.workspace, T, b.cp_cu_seqlens.back(), cp_size(ctx), ng, d, true);
    cp_gather_rows(ctx, b, s.k.data(), ng * d, x, x.k.data());
    cp_gather_rows(ctx, b, s.v.data(), ng * d, x, x.v.data());
    ops::attention_varlen_backward(be, varlen_whole_keys(ctx, c, b), s.q.data(), x.k.data(), x.v.data(), s.out.data(),
                                   s.lse.data(), t.dout.data(), t.dq.data(), x.dk.data(), x.dv.data());
    cp_reduce_rows(ctx, b, x.dk.data(), ng * d, x, t.dk.data());
    cp_reduce_rows(ctx, b, x.dv.data(), ng * d, x, t.dv.data());
  } else {
    ops::attention_varlen_backward(be, varlen(ctx, c, b), s.q.data(), s.k.data(), s.v.data(), s.out.data(),
                                   s.lse.data(), t.dout.data(), t.dq.data(), t.dk.data(), t.dv.data());
  }
  ops::rope_backward(be, t.dq.data(), T, nh, d, b.positions.data(), rope.cos(), rope.sin());
  ops::rope_backward(be, t.dk.data(), T, ng, d, b.positions.data(), rope.cos(), rope.sin());
  if (c.qk_layernorm) {
    // The norms' inputs are the raw projections, still in the saved qkv buffer.
    ops::qkv_split(be, s.qkv.data(), T, nh, ng, d, t.q_raw.data(), t.k_raw.data(), t.v_unused.data());
    const float eps = float(c.norm_epsilon);
    // Under TP the norms' gradients come from this rank's heads only: summed over TP first.
    float* dq_norm = tp ? t.dnorms_2d.data() : g.q_norm.f32();
    float* dk_norm = tp ? t.dnorms_2d.data() + d : g.k_norm.f32();
    if (tp) ops::fill(be, t.dnorms_2d.data(), 0.0f, 2 * d);
    ops::rmsnorm_backward(be, t.q_raw.data(), T * nh, d, w.q_norm.f32(), eps, t.dq.data(), t.dq.data(), dq_norm);
    ops::rmsnorm_backward(be, t.k_raw.data(), T * ng, d, w.k_norm.f32(), eps, t.dk.data(), t.dk.data(), dk_norm);
    if (tp) {
      tp_all_reduce(ctx, t.dnorms_2d.data(), 2 * d);
      ops::add(be, g.q_norm.f32(), dq_norm, d);
      ops::add(be, g.k_norm.f32(), dk_norm, d);
    }
  }
  const std::span<float> dqkv = t.dqkv;
  ops::qkv_merge(be, t.dq.data(), t.dk.data(), t.dv.data(), T, nh, ng, d, dqkv.data());
  if (has(w.qkv_bias)) ops::bias_backward(be, dqkv.data(), T, rows, g.qkv_bias.f32());
  ops::linear_backward_weight(be, dqkv.data(), x, T, rows, D, g.qkv.f32());
  ops::linear_backward_input(be, dqkv.data(), T, w.qkv.f32(), rows, D, dx, false);
}

}  // namespace moe::model
