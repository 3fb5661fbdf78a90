#include "model/workspace.h"

#include <algorithm>

#include "core/arena.h"
#include "core/error.h"
#include "model/attention.h"
#include "model/context_parallel.h"
#include "model/mlp.h"
#include "model/moe_layer.h"
#include "model/vocab_parallel.h"

namespace moe::model {

namespace {

size_t floats(int64_t n) { return Arena::rounded(size_t(n) * sizeof(float)); }
size_t bytes(std::span<const float> s) { return Arena::rounded(s.size_bytes()); }

bool has_module(const RecomputeOptions& r, const char* m) {
  return r.granularity == Recompute::kSelective && std::find(r.modules.begin(), r.modules.end(), m) != r.modules.end();
}

// The recompute flags a layer's forward and backward read (Stage::layer_forward's).
struct Flags {
  bool keep_norms, act, mlp_kept;
};

Flags flags(const RecomputeOptions& r, bool moe, bool keep) {
  return {keep && !has_module(r, "layernorm"), keep && has_module(r, "moe_act"),
          keep && !has_module(r, moe ? "moe" : "mlp")};
}

MoeDims moe_of(const StageShape& s, const TrainOptions& o, int64_t T) {
  MoeDims m = moe_dims(T, s.hidden, s.experts, s.topk, s.moe_ffn, s.shared_ffn, s.shared_gate, o.moe);
  set_tensor_parallel(m, s.tp, s.moe_own_rows ? s.seq_rows(T) : 0, o.moe);
  return m;
}

// The branch's (MoE or dense MLP) kept activations and then its forward temporaries, as
// moe_layer_forward / swiglu_mlp_forward carve them.
void branch_forward(const StageShape& s, const TrainOptions& o, int64_t T, bool moe, bool act, Arena& keep, Arena& ws) {
  if (moe) {
    const MoeDims m = moe_of(s, o, T);
    carve_moe_saved(keep, m, act);
    ArenaScope scope(ws);
    ws.take<std::byte>(moe_forward_scratch_bytes(m, act));
  } else {
    carve_swiglu_saved(keep, T, s.ffn, act);
    ArenaScope scope(ws);
    carve_swiglu_forward_scratch(ws, T, s.ffn, act);
  }
}

// Stage::layer_forward's carves: the kept activations into `keep`, temporaries into `ws` (the
// same arena for inference and for a recomputed chunk, where the caller releases both).
void layer_forward(const StageShape& s, const TrainOptions& o, int64_t T, int64_t Tw, bool moe, bool keep,
                   bool x_in_kept, Arena& saved, Arena& ws) {
  const int64_t D = s.hidden;
  const size_t SD = size_t(s.seq_rows(T) * D), FD = size_t(s.full_rows(T) * D);
  const Flags f = flags(o.recompute, moe, keep);
  const size_t ws_mark = ws.mark();
  if (keep && !x_in_kept) saved.take<float>(SD);            // x_in
  (f.keep_norms ? saved : ws).take<float>(SD);              // h1 (reused as h2 when not kept)
  ws.take<float>(FD);                                       // y
  if (s.seq_rows(T) != s.full_rows(T)) ws.take<float>(FD);  // sequence parallel: the gathered norm output
  carve_attention_saved(saved, T, s.heads, s.query_groups, s.head_dim);
  if (s.cp > 1) {  // the whole keys and values, during attention
    ArenaScope scope(ws);
    carve_cp_attention_scratch(ws, T, Tw, s.cp, s.query_groups, s.head_dim, false);
  }
  if (keep) saved.take<float>(SD);          // x_mid
  if (f.keep_norms) saved.take<float>(SD);  // h2
  branch_forward(s, o, T, moe, f.act, keep && !f.mlp_kept ? ws : saved, ws);
  if (&saved != &ws) ws.release(ws_mark);
}

// Stage::layer_backward's carves, all temporaries.
void layer_backward(const StageShape& s, const TrainOptions& o, int64_t T, int64_t Tw, bool moe, Arena& ws) {
  const int64_t D = s.hidden;
  const size_t SD = size_t(s.seq_rows(T) * D), FD = size_t(s.full_rows(T) * D);
  const Flags f = flags(o.recompute, moe, true);
  ArenaScope scope(ws);
  if (!f.keep_norms) ws.take<float>(2 * SD);                    // h1, h2 recomputed
  if (s.seq_rows(T) != s.full_rows(T)) ws.take<float>(2 * FD);  // sequence parallel: gathered norm output, gradient
  if (!f.mlp_kept) {
    ws.take<float>(size_t(T * D));  // y of the rerun branch
    branch_forward(s, o, T, moe, f.act, ws, ws);
  }
  ws.take<float>(FD);  // dh
  const size_t mark = ws.mark();
  if (moe) ws.take<std::byte>(moe_backward_scratch_bytes(moe_of(s, o, T), f.act));
  else carve_swiglu_backward_scratch(ws, T, s.ffn, f.act);
  ws.release(mark);
  carve_attention_backward_scratch(ws, T, s.heads, s.query_groups, s.head_dim, s.qk_layernorm, s.tp > 1);
  if (s.cp > 1) carve_cp_attention_scratch(ws, T, Tw, s.cp, s.query_groups, s.head_dim, true);
}

LayerBytes layer_bytes(const StageShape& s, const TrainOptions& o, int64_t T, bool moe, bool whole) {
  const int64_t D = s.hidden;
  const Flags f = flags(o.recompute, moe, true);
  const int64_t Ts = s.seq_rows(T);  // the norms' inputs and outputs: this rank's rows
  LayerBytes b;
  b.attn_norm_in = floats(Ts * D);
  if (!whole) return b;
  Arena m = Arena::measuring();
  const AttentionSaved a = carve_attention_saved(m, T, s.heads, s.query_groups, s.head_dim);
  b.attn_qkv = bytes(a.qkv) + bytes(a.q) + bytes(a.k) + bytes(a.v);
  b.attn_out = bytes(a.out) + bytes(a.lse);
  b.mlp_norm_in = floats(Ts * D);
  if (f.keep_norms) b.attn_qkv_in = b.mlp_fc1_in = floats(Ts * D);
  if (!f.mlp_kept) return b;
  const int64_t width = moe ? s.shared_ffn : s.ffn;
  if (width > 0) {
    const SwigluSaved sw = carve_swiglu_saved(m, T, width, f.act);
    b.mlp_fc1_out = bytes(sw.gu_T2F);
    b.mlp_act_out = bytes(sw.h_TF);
  }
  if (moe) {
    const MoeDims d = moe_of(s, o, T);
    const int64_t R = TokenDispatcher::max_rows(d.Tr, d.K, d.E, d.capacity, d.pad_to);
    if (d.shared_F > 0) b.mlp_act_out += floats(T * D) + (d.shared_gate ? 2 * floats(T) : 0);
    b.expert_fc1_in = floats(R * D);
    b.expert_fc1_out = floats(R * 2 * d.F);
    b.expert_act_out = f.act ? 0 : floats(R * d.F);
    b.combine = floats(R * D);
    Arena r = Arena::measuring();
    r.take<float>(size_t(d.Tr * d.E));  // router logits
    carve_router_saved(r, d.Tr, d.E, d.K);
    TokenDispatcher::carve(r, d.E, R);
    b.router = r.high_water();
    // The parts add up to what carve_moe_saved carves.
    Arena all = Arena::measuring();
    carve_moe_saved(all, d, f.act);
    MOE_ASSERT(all.high_water() == b.router + b.expert_fc1_in + b.expert_fc1_out + b.expert_act_out + b.combine +
                                       b.mlp_fc1_out + b.mlp_act_out,
               "MoE layer bytes by part disagree with carve_moe_saved");
  }
  return b;
}

}  // namespace

size_t LayerBytes::total() const {
  return attn_norm_in + attn_qkv_in + attn_qkv + attn_out + mlp_norm_in + mlp_fc1_in + mlp_fc1_out + mlp_act_out +
         router + expert_fc1_in + expert_fc1_out + expert_act_out + combine;
}

StageShape stage_shape(const Context& ctx, const ModelConfig& c, int begin, int end) {
  StageShape s;
  s.hidden = c.hidden_size, s.heads = ctx.local.heads, s.query_groups = ctx.local.query_groups;
  s.head_dim = c.kv_channels, s.vocab = c.vocab_size, s.qk_layernorm = c.qk_layernorm;
  s.ffn = c.ffn_hidden_size;
  s.experts = c.num_experts, s.topk = c.moe_router_topk, s.moe_ffn = c.moe_ffn_hidden_size;
  s.shared_ffn = c.moe_shared_expert_intermediate_size, s.shared_gate = c.moe_shared_expert_gate;
  for (int i = begin; i < end; ++i) s.moe_layers.push_back(c.is_moe_layer(i));
  s.tp = tp_size(ctx), s.sequence_parallel = sequence_parallel(ctx), s.cp = cp_size(ctx);
  s.moe_own_rows = moe_routes_own_rows(ctx);
  if (s.tp > 1) {  // this rank's slices (ShardSpec's local shapes)
    s.ffn = ctx.local.ffn, s.moe_ffn = ctx.local.moe_ffn, s.shared_ffn = ctx.local.shared_ffn;
    s.vocab = ctx.local.vocab_rows;
  }
  return s;
}

std::vector<std::pair<int, int>> layer_chunks(const RecomputeOptions& r, int L, std::vector<bool>* recomputed) {
  // Full recompute keeps only each chunk's input and reruns the chunk in the backward.
  std::vector<std::pair<int, int>> chunks;
  recomputed->clear();
  if (r.granularity == Recompute::kFull && r.method == "uniform") {
    for (int b = 0; b < L; b += r.num_layers) {
      chunks.emplace_back(b, std::min(L, b + r.num_layers));
      recomputed->push_back(true);
    }
  } else {
    for (int b = 0; b < L; ++b) {
      chunks.emplace_back(b, b + 1);
      recomputed->push_back(r.granularity == Recompute::kFull && b < r.num_layers);
    }
  }
  return chunks;
}

StageWorkspace stage_workspace(const StageShape& s, const TrainOptions& o, int64_t T, StageCall call, int64_t Tw) {
  const int64_t D = s.hidden;
  const int L = int(s.moe_layers.size());
  const bool inference = call == StageCall::kInference, train = call == StageCall::kTrain;
  std::vector<bool> recomputed;
  const auto chunks = layer_chunks(o.recompute, L, &recomputed);
  StageWorkspace w;
  Arena mb = Arena::measuring(), ws = Arena::measuring();
  const size_t SD = size_t(s.seq_rows(T) * D);
  // Stage::begin: the step's buffers (whole rows: under SP they also hold gathered activations).
  for (int n = 0; n < (train ? 4 : 3); ++n) mb.take<float>(size_t(s.full_rows(T) * D));
  w.step = mb.used();
  if (s.tp > 1) {  // the vocabulary-parallel embedding's local ids, before the layers
    ArenaScope scope(ws);
    ws.take<int32_t>(size_t(T));
  }
  // Stage::run_layers.
  for (size_t c = 0; c < chunks.size(); ++c)
    for (int i = chunks[c].first; i < chunks[c].second; ++i) {
      const bool moe = s.moe_layers[size_t(i)];
      if (inference) {
        ArenaScope scope(ws);
        layer_forward(s, o, T, Tw, moe, false, false, ws, ws);
        continue;
      }
      if (!train) {  // evaluation: each layer from the micro-batch's arena, gone after it
        const size_t mark = mb.mark();
        layer_forward(s, o, T, Tw, moe, true, false, mb, ws);
        mb.release(mark);
        continue;
      }
      if (!recomputed[c]) {
        layer_forward(s, o, T, Tw, moe, true, false, mb, ws);
        w.layers.push_back(layer_bytes(s, o, T, moe, true));
        continue;
      }
      // A recomputed chunk keeps its first layer's input and runs in the workspace.
      const bool x_in = i == chunks[c].first;
      if (x_in) mb.take<float>(SD);
      {
        ArenaScope scope(ws);
        layer_forward(s, o, T, Tw, moe, true, x_in, ws, ws);
      }
      w.layers.push_back(x_in ? layer_bytes(s, o, T, moe, false) : LayerBytes{});
    }
  if (train) {
    size_t kept = w.step;
    for (const LayerBytes& b : w.layers) kept += b.total();
    MOE_ASSERT(kept == mb.used(), "kept bytes by layer ({}) disagree with the carves ({})", kept, mb.used());
  }
  w.forward = ws.high_water();
  if (!inference) {  // Stage::forward_loss: the LM head, chunk by chunk
    Arena head = Arena::measuring();
    const int64_t n = std::min(T, kHeadChunk);
    head.take<int64_t>(size_t(T));  // labelled rows
    head.take<float>(size_t(n * D)), head.take<float>(size_t(n * s.vocab)), head.take<int32_t>(size_t(n));
    if (train) head.take<float>(size_t(n * D));
    if (s.tp > 1) carve_vocab_parallel_scratch(head, n);
    w.head = head.high_water();
  }
  if (train) {  // Stage::backward
    Arena bw = Arena::measuring();
    for (size_t c = chunks.size(); c-- > 0;) {
      ArenaScope scope(bw);
      const auto [first, end] = chunks[c];
      if (recomputed[c]) {
        bw.take<float>(SD), bw.take<float>(SD);  // xi, xo
        for (int i = first; i < end; ++i) layer_forward(s, o, T, Tw, s.moe_layers[size_t(i)], true, i == first, bw, bw);
      }
      for (int i = end; i-- > first;) layer_backward(s, o, T, Tw, s.moe_layers[size_t(i)], bw);
    }
    if (s.tp > 1) {  // the embedding's local ids
      ArenaScope scope(bw);
      bw.take<int32_t>(size_t(T));
    }
    w.backward = bw.high_water();
  }
  w.saved = mb.high_water();
  w.scratch = std::max({w.forward, w.head, w.backward});
  return w;
}

}  // namespace moe::model
