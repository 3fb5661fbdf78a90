#include "model/stage.h"

#include <algorithm>

#include "core/error.h"
#include "kernels/ops.h"
#include "model/vocab_parallel.h"
#include "model/workspace.h"

namespace moe::model {

namespace {

bool has_module(const RecomputeOptions& r, const std::string& m) {
  return r.granularity == Recompute::kSelective && std::find(r.modules.begin(), r.modules.end(), m) != r.modules.end();
}

}  // namespace

Stage::Stage(Context ctx, const ModelConfig& c, StageWeights weights, StageWeights* grads, TrainOptions options)
    : ctx_(std::move(ctx)),
      cfg_(c),
      w_(std::move(weights)),
      g_(grads),
      opt_(std::move(options)),
      rope_(cfg_, ctx_.backend.memory) {
  if (!ctx_.workspace) ctx_.workspace = std::make_shared<Arena>(ctx_.backend.memory);
  MOE_ASSERT(ctx_.workspace->device() == ctx_.backend.memory.get(), "the workspace arena is not the backend's memory");
  first_ = w_.embedding.defined(), last_ = w_.final_norm.defined();
  shape_ = stage_shape(ctx_, cfg_, 0, 0);
  for (const LayerWeights& l : w_.layers) shape_.moe_layers.push_back(l.is_moe);
  chunks_ = layer_chunks(opt_.recompute, int(w_.layers.size()), &chunk_recomputed_);
}

const StageWorkspace& Stage::workspace(int64_t T, StageCall call, int64_t Tw) {
  Sized& s = sized_[int(call)];
  if (s.T != T || s.Tw != Tw) s.w = stage_workspace(shape_, opt_, T, call, Tw), s.T = T, s.Tw = Tw;
  return s.w;
}

void Stage::begin(StageActs& acts, const Batch& b, StageCall call) {
  // Both arenas are empty between calls (a micro-batch's arena once its backward ran), so they
  // may grow here; in steady state they are already large enough and nothing is allocated.
  const int64_t T = b.size();
  const StageWorkspace& w = workspace(T, call, b.cp_cu_seqlens.empty() ? 0 : b.cp_cu_seqlens.back());
  MOE_ASSERT(acts.arena.device() == ctx_.backend.memory.get(), "a micro-batch's arena is not the backend's memory");
  acts.arena.reset();
  acts.arena.reserve(w.saved);
  MOE_ASSERT(ctx_.workspace->used() == 0, "workspace arena not empty between calls");
  ctx_.workspace->reserve(w.scratch);
  const size_t TD = size_t(full_rows(ctx_, T) * cfg_.hidden_size);  // under SP they also hold gathered rows
  acts.x = acts.arena.take<float>(TD), acts.x_next = acts.arena.take<float>(TD);
  acts.hf = acts.arena.take<float>(TD);
  acts.dhf = call == StageCall::kTrain ? acts.arena.take<float>(TD) : std::span<float>();
}

BatchIndex Stage::device_index(const Batch& b, StageActs& acts) const {
  const size_t T = b.tokens.size(), n = 2 * T + b.cu_seqlens.size();
  if (acts.index.bytes() < n * sizeof(int32_t))
    acts.index =
        DeviceArray(ctx_.backend.memory, std::max(n, 2 * acts.index.bytes() / sizeof(int32_t)) * sizeof(int32_t),
                    "a batch's token ids and positions");
  std::vector<int32_t> host(b.tokens.begin(), b.tokens.end());  // one copy across for the three arrays
  host.insert(host.end(), b.positions.begin(), b.positions.end());
  host.insert(host.end(), b.cu_seqlens.begin(), b.cu_seqlens.end());
  ops::to_device(ctx_.backend, acts.index.get(), host.data(), n * sizeof(int32_t));
  const int32_t* p = acts.index.as<const int32_t>();
  return {{p, T}, {p + T, T}, {p + 2 * T, b.cu_seqlens.size()}};
}

void Stage::check_batch(const Batch& b) const {
  const int64_t T = b.size(), V = cfg_.vocab_size;
  if (b.positions.size() != size_t(T) || (!b.labels.empty() && b.labels.size() != size_t(T)))
    throw_internal("micro-batch: {} tokens but {} labels and {} positions", T, b.labels.size(), b.positions.size());
  if (b.cu_seqlens.size() < 2 || b.cu_seqlens.front() != 0 || b.cu_seqlens.back() != T)
    throw_internal("micro-batch: cu_seqlens must run from 0 to {} tokens", T);
  for (size_t s = 1; s < b.cu_seqlens.size(); ++s)
    if (b.cu_seqlens[s] < b.cu_seqlens[s - 1]) throw_internal("micro-batch: cu_seqlens not increasing");
  if (b.cache && b.cu_seqlens.size() != 2) throw_internal("an inference batch with a KV cache holds one sequence");
  if (!b.caches.empty() && (b.cache || b.caches.size() + 1 != b.cu_seqlens.size()))
    throw_internal("a batched inference batch holds one KV cache per sequence");
  const auto& whole = b.cp_cu_seqlens;  // context parallelism: every position inside its whole sequence
  if (!whole.empty() && whole.size() != b.cu_seqlens.size())
    throw_internal("micro-batch: {} sequences on this CP rank, {} in the whole micro-batch", b.cu_seqlens.size() - 1,
                   whole.size() - 1);
  for (size_t s = 0; s + 1 < whole.size(); ++s)
    for (int32_t t = b.cu_seqlens[s]; t < b.cu_seqlens[s + 1]; ++t)
      if (b.positions[size_t(t)] >= whole[s + 1] - whole[s]) throw_internal("CP rank's position past its sequence");
  for (int64_t t = 0; t < T; ++t) {
    if (b.tokens[size_t(t)] < 0 || b.tokens[size_t(t)] >= V)
      throw_input("token id {} is outside the vocabulary [0, {})", b.tokens[size_t(t)], V);
    if (b.positions[size_t(t)] < 0) throw_internal("negative position id");
  }
  for (int32_t l : b.labels)
    if (l >= V || (l < 0 && l != -100)) throw_input("label {} is outside the vocabulary [0, {}) and not -100", l, V);
}

void Stage::layer_forward(int i, const Batch& b, const float* x_in, float* x_out, LayerActs& a, bool keep,
                          Arena& saved) {
  // Carves as stage_workspace's layer_forward counts: kept activations into `saved`, the rest
  // into the workspace (released here unless they share an arena, then the caller releases).
  const Backend& be = ctx_.backend;
  Arena& ws = *ctx_.workspace;
  const size_t ws_mark = ws.mark();
  // Under sequence parallelism the residual stream and the norms have this rank's Ts rows; the
  // norm's output is gathered whole for the branch, whose output is reduce-scattered back.
  const int64_t T = b.size(), D = cfg_.hidden_size, Ts = seq_rows(ctx_, T);
  const bool sp = sequence_parallel(ctx_);
  const size_t SD = size_t(Ts * D), FD = size_t(full_rows(ctx_, T) * D);
  const float eps = float(cfg_.norm_epsilon);
  const LayerWeights& w = w_.layers[size_t(i)];
  const auto& r = opt_.recompute;
  if (keep && a.x_in.empty()) {
    a.x_in = saved.take<float>(SD);
    ops::copy(be, a.x_in.data(), x_in, Ts * D);
  }
  const bool keep_norms = keep && !has_module(r, "layernorm");
  const std::span<float> h1 = keep_norms ? (a.h1 = saved.take<float>(SD)) : ws.take<float>(SD);
  const std::span<float> y = ws.take<float>(FD);
  const std::span<float> hf = sp ? ws.take<float>(FD) : h1;  // the branches' input, whole
  ops::rmsnorm(be, x_in, Ts, D, w.attn.input_norm.f32(), eps, h1.data());
  if (sp) seq_all_gather(ctx_, h1.data(), T, D, hf.data());
  attention_forward(ctx_, cfg_, w.attn, i, hf.data(), b, rope_, saved, a.attn, y.data());
  const float* yl = reduce_branch(y.data(), T, true, hf.data());  // linear_proj is row-parallel
  ops::copy(be, x_out, x_in, Ts * D);
  ops::add(be, x_out, yl, Ts * D);
  if (keep) {
    a.x_mid = saved.take<float>(SD);
    ops::copy(be, a.x_mid.data(), x_out, Ts * D);
  }
  const std::span<float> h2 = keep_norms ? (a.h2 = saved.take<float>(SD)) : h1;  // h1 is read no more
  ops::rmsnorm(be, x_out, Ts, D, w.pre_mlp_norm.f32(), eps, h2.data());
  // A folded MoE layer without a shared expert reads and writes this rank's rows alone.
  const bool local = w.is_moe && moe_dims(ctx_, cfg_, opt_.moe, T).rows_local;
  if (sp && !local) seq_all_gather(ctx_, h2.data(), T, D, hf.data());
  const float* x2 = sp && !local ? hf.data() : h2.data();
  // A branch the backward reruns (selective mlp/moe) runs in the workspace.
  const bool act = keep && has_module(r, "moe_act");
  a.mlp_kept = keep && !has_module(r, w.is_moe ? "moe" : "mlp");
  Arena& branch = keep && !a.mlp_kept ? ws : saved;
  if (w.is_moe) moe_layer_forward(ctx_, cfg_, opt_.moe, w.moe, x2, b, act, branch, a.moe, y.data());
  else swiglu_mlp_forward(ctx_, x2, T, w.mlp.fc1, w.mlp.fc2, branch, a.mlp, y.data(), false, act);
  // fc2 is row-parallel; the MoE layer's output is whole (it reduces its experts' own).
  yl = local ? y.data() : reduce_branch(y.data(), T, !w.is_moe, hf.data());
  ops::add(be, x_out, yl, Ts * D);
  if (keep && !a.mlp_kept) a.moe = {}, a.mlp = {};
  a.complete = keep;
  if (&saved != &ws) ws.release(ws_mark);
}

float* Stage::reduce_branch(float* full, int64_t T, bool partial, float* local) {
  const int64_t D = cfg_.hidden_size;
  if (!sequence_parallel(ctx_)) {
    if (partial) tp_all_reduce(ctx_, full, T * D);
    return full;
  }
  if (partial) seq_reduce_scatter(ctx_, full, T, D, local);
  else seq_take_rows(ctx_, full, T, D, local);
  return local;
}

void Stage::layer_backward(int i, const Batch& b, LayerActs& a, float* dx, float aux_scale) {
  // Carves as stage_workspace's layer_backward counts, all from the workspace.
  const Backend& be = ctx_.backend;
  Arena& ws = *ctx_.workspace;
  ArenaScope scope(ws);
  // Under sequence parallelism dx and the norms have this rank's Ts rows: the branches take the
  // norm output and dx gathered whole, and their input gradients are reduce-scattered back.
  const int64_t T = b.size(), D = cfg_.hidden_size, Ts = seq_rows(ctx_, T);
  const bool sp = sequence_parallel(ctx_);
  const size_t SD = size_t(Ts * D), FD = size_t(full_rows(ctx_, T) * D);
  const float eps = float(cfg_.norm_epsilon);
  const LayerWeights& w = w_.layers[size_t(i)];
  LayerWeights& g = g_->layers[size_t(i)];
  MOE_ASSERT(a.complete, "layer {} backward without its activations", i);
  // The normalised inputs, recomputed when the layernorm recompute module dropped them.
  const float* h1 = a.h1.data();
  const float* h2 = a.h2.data();
  if (a.h1.empty()) {
    const std::span<float> h = ws.take<float>(2 * SD);
    ops::rmsnorm(be, a.x_in.data(), Ts, D, w.attn.input_norm.f32(), eps, h.data());
    ops::rmsnorm(be, a.x_mid.data(), Ts, D, w.pre_mlp_norm.f32(), eps, h.data() + SD);
    h1 = h.data(), h2 = h.data() + SD;
  }
  const std::span<float> hf = sp ? ws.take<float>(FD) : std::span<float>();   // a norm's output, whole
  const std::span<float> dyf = sp ? ws.take<float>(FD) : std::span<float>();  // dx, whole
  const float* x2 = h2;
  const bool local = w.is_moe && moe_dims(ctx_, cfg_, opt_.moe, T).rows_local;  // as in layer_forward
  if (sp && !local) seq_all_gather(ctx_, h2, T, D, hf.data()), x2 = hf.data();
  const bool act = has_module(opt_.recompute, "moe_act");
  if (!a.mlp_kept) {  // selective mlp/moe recompute: rerun the branch's forward now
    const std::span<float> y = ws.take<float>(size_t(T * D));
    if (w.is_moe) moe_layer_forward(ctx_, cfg_, opt_.moe, w.moe, x2, b, act, ws, a.moe, y.data());
    else swiglu_mlp_forward(ctx_, x2, T, w.mlp.fc1, w.mlp.fc2, ws, a.mlp, y.data(), false, act);
  }
  // MLP branch: x_out = x_mid + mlp(norm(x_mid)).
  const std::span<float> dh = ws.take<float>(FD);
  const float* dy = dx;
  if (sp && !local) seq_all_gather(ctx_, dx, T, D, dyf.data()), dy = dyf.data();
  if (w.is_moe) moe_layer_backward(ctx_, cfg_, opt_.moe, w.moe, g.moe, x2, b, a.moe, dy, aux_scale, dh.data());
  else swiglu_mlp_backward(ctx_, x2, T, w.mlp.fc1, w.mlp.fc2, a.mlp, dy, dh.data(), false, g.mlp.fc1, g.mlp.fc2);
  float* dl = local ? dh.data() : reduce_branch(dh.data(), T, !w.is_moe, dyf.data());  // fc1 is column-parallel
  ops::rmsnorm_backward(be, a.x_mid.data(), Ts, D, w.pre_mlp_norm.f32(), eps, dl, dl, g.pre_mlp_norm.f32());
  ops::add(be, dx, dl, Ts * D);
  // Attention branch: x_mid = x_in + attn(norm(x_in)).
  const float* x1 = h1;
  if (sp) {
    seq_all_gather(ctx_, h1, T, D, hf.data()), x1 = hf.data();
    seq_all_gather(ctx_, dx, T, D, dyf.data()), dy = dyf.data();
  }
  attention_backward(ctx_, cfg_, w.attn, g.attn, x1, b, rope_, a.attn, dy, dh.data());
  dl = reduce_branch(dh.data(), T, true, hf.data());  // linear_qkv is column-parallel
  ops::rmsnorm_backward(be, a.x_in.data(), Ts, D, w.attn.input_norm.f32(), eps, dl, dl, g.attn.input_norm.f32());
  ops::add(be, dx, dl, Ts * D);
  a = {};
}

void Stage::run_layers(const Batch& b, StageActs& acts, bool keep, bool inference, StepStats* st, const float* input) {
  const int64_t T = b.size();
  const int L = int(w_.layers.size());
  const size_t E = size_t(std::max(cfg_.num_experts, 0));
  int32_t max_pos = 0;
  for (int32_t p : b.positions) max_pos = std::max(max_pos, p);
  rope_.reserve(int64_t(max_pos) + 1);
  const int64_t Ts = seq_rows(ctx_, T);
  if (first_) params_needed(kEmbedding);
  if (!first_) {
    MOE_ASSERT(input != nullptr, "a pipeline stage without the embedding needs the previous stage's output");
    ops::copy(ctx_.backend, acts.x.data(), input, Ts * cfg_.hidden_size);
  } else if (sequence_parallel(ctx_)) {  // each rank's rows of the summed vocabulary slices
    vocab_parallel_embedding(ctx_, w_.embedding, b.tokens, acts.x_next.data(), false);
    seq_reduce_scatter(ctx_, acts.x_next.data(), T, cfg_.hidden_size, acts.x.data());
  } else if (tp_size(ctx_) > 1) {
    vocab_parallel_embedding(ctx_, w_.embedding, b.tokens, acts.x.data());
  } else {
    ops::embedding_gather(ctx_.backend, w_.embedding, op_index(b).tokens, acts.x.data());
  }
  if (!inference) acts.layers.resize(size_t(L));
  auto collect = [&](int i) {
    if (!st || !w_.layers[size_t(i)].is_moe) return;
    const RouterSaved& r = acts.layers[size_t(i)].moe.router;
    st->aux_loss += r.aux_loss, st->z_loss += r.z_loss;
    std::copy(r.tokens_per_expert.begin(), r.tokens_per_expert.end(), st->tokens_per_expert.begin() + i * E);
  };
  Arena& ws = *ctx_.workspace;
  for (size_t c = 0; c < chunks_.size(); ++c)
    for (int i = chunks_[c].first; i < chunks_[c].second; ++i) {
      params_needed(i);
      if (inference) {  // nothing kept: the layer's buffers go back to the workspace after it
        ArenaScope scope(ws);
        layer_forward(i, b, acts.x.data(), acts.x_next.data(), acts.scratch, false, ws);
        acts.scratch = {};
        std::swap(acts.x, acts.x_next);
        continue;
      }
      // A layer not kept goes after its forward: in evaluation from the micro-batch's arena, in a
      // recomputed chunk (which keeps its first layer's input) from the workspace, where its
      // backward rebuilds it. The MoE statistics are read before its activations go.
      LayerActs& a = acts.layers[size_t(i)];
      a = {};
      if (!keep) {
        const size_t mark = acts.arena.mark();
        layer_forward(i, b, acts.x.data(), acts.x_next.data(), a, true, acts.arena);
        collect(i);
        acts.arena.release(mark);
        a = {};
      } else if (!chunk_recomputed_[c]) {
        layer_forward(i, b, acts.x.data(), acts.x_next.data(), a, true, acts.arena);
        collect(i);
      } else {
        std::span<float> x_in;
        if (i == chunks_[c].first) {
          x_in = acts.arena.take<float>(size_t(Ts * cfg_.hidden_size));
          ops::copy(ctx_.backend, x_in.data(), acts.x.data(), Ts * cfg_.hidden_size);
        }
        ArenaScope scope(ws);
        a.x_in = x_in;  // kept already, or carved in the workspace when empty
        layer_forward(i, b, acts.x.data(), acts.x_next.data(), a, true, ws);
        collect(i);
        a = {};
        a.x_in = x_in;
      }
      std::swap(acts.x, acts.x_next);
    }
  if (b.cache) b.cache->advance(T);
  for (size_t q = 0; q < b.caches.size(); ++q) b.caches[q]->advance(b.cu_seqlens[q + 1] - b.cu_seqlens[q]);
}

void Stage::forward_logits(const Batch& host_batch, StageActs& acts, float* logits, bool all_logits) {
  const int64_t T = host_batch.size(), D = cfg_.hidden_size;
  if (T == 0) return;
  Batch b = host_batch;
  BatchIndex index;
  if (!ctx_.backend.host_memory()) b.device = &(index = device_index(b, acts));
  // The generator runs one process; the vocabulary-parallel head would need its logits gathered.
  if (tp_size(ctx_) > 1) throw_internal("inference under tensor parallelism is not implemented");
  if (!first_ || !last_) throw_internal("inference over one pipeline stage of several is not implemented");
  check_batch(b);
  if (b.cache) b.cache->reserve(b.cache->length() + T);
  for (size_t q = 0; q < b.caches.size(); ++q)
    b.caches[q]->reserve(b.caches[q]->length() + b.cu_seqlens[q + 1] - b.cu_seqlens[q]);
  begin(acts, b, StageCall::kInference);
  run_layers(b, acts, false, true, nullptr, nullptr);
  if (!b.caches.empty() && !all_logits) {
    // Batched decode: the logits of each sequence's last token, [S, V]. Each row is computed as
    // alone (a row's norm and gemv never mix rows), so a sequence decodes to the same bits.
    const int64_t S = int64_t(b.caches.size());
    for (int64_t q = 0; q < S; ++q)
      ops::copy(ctx_.backend, acts.x_next.data() + q * D, acts.x.data() + (b.cu_seqlens[size_t(q) + 1] - 1) * D, D);
    ops::rmsnorm(ctx_.backend, acts.x_next.data(), S, D, w_.final_norm.f32(), float(cfg_.norm_epsilon), acts.hf.data());
    ops::linear(ctx_.backend, acts.hf.data(), S, w_.output, nullptr, logits);
    acts.arena.reset();
    return;
  }
  const int64_t first = all_logits ? 0 : T - 1, n = T - first;
  ops::rmsnorm(ctx_.backend, acts.x.data() + first * D, n, D, w_.final_norm.f32(), float(cfg_.norm_epsilon),
               acts.hf.data());
  ops::linear(ctx_.backend, acts.hf.data(), n, w_.output, nullptr, logits);
  acts.arena.reset();
}

StepStats Stage::forward_loss(const Batch& b, StageActs& acts, bool keep, float loss_scale, float* logits_out,
                              const float* input) {
  const Backend& be = ctx_.backend;
  const int64_t T = b.size(), D = cfg_.hidden_size;
  // The head's labelled rows and the losses are worked out on the host for now.
  if (!be.host_memory()) throw_internal("training and evaluation on a device are not implemented yet");
  check_batch(b);
  begin(acts, b, keep ? StageCall::kTrain : StageCall::kEvaluate);
  // Under TP this rank's columns of the logits: its rows of the LM head, the padding rows past the
  // model's vocabulary left out (Megatron keeps them in the softmax; the one-process run has none).
  const bool tp = tp_size(ctx_) > 1;
  const int64_t V =
      tp ? std::clamp<int64_t>(cfg_.vocab_size - ctx_.local.vocab_begin, 0, ctx_.local.vocab_rows) : cfg_.vocab_size;
  const Tensor head = tp && last_ ? w_.output.slice_rows(0, V) : w_.output;
  if (tp && logits_out) throw_internal("the head's logits are not gathered under tensor parallelism");
  StepStats st;
  st.tokens_per_expert.assign(w_.layers.size() * size_t(std::max(cfg_.num_experts, 0)), 0);
  run_layers(b, acts, keep, false, &st, input);
  if (!last_) {  // a pipeline stage before the last: its output stays in acts.x for the next stage
    if (keep) ops::fill(be, acts.dhf.data(), 0.0f, T * D);
    return st;
  }
  params_needed(kHead);

  // Final norm and LM head with the loss, chunk by chunk over the labelled tokens only; the
  // chunk's buffers as stage_workspace counts them.
  Arena& ws = *ctx_.workspace;
  ArenaScope scope(ws);
  const float eps = float(cfg_.norm_epsilon);
  const bool sp = sequence_parallel(ctx_);
  if (sp) {  // the norm on this rank's rows, gathered whole for the head
    ops::rmsnorm(be, acts.x.data(), seq_rows(ctx_, T), D, w_.final_norm.f32(), eps, acts.x_next.data());
    seq_all_gather(ctx_, acts.x_next.data(), T, D, acts.hf.data());
  } else {
    ops::rmsnorm(be, acts.x.data(), T, D, w_.final_norm.f32(), eps, acts.hf.data());
  }
  if (keep) ops::fill(be, acts.dhf.data(), 0.0f, T * D);
  const std::span<int64_t> labelled = ws.take<int64_t>(size_t(T));
  size_t n_rows = 0;
  for (int64_t t = 0; t < T; ++t)
    if (b.labels[size_t(t)] >= 0) labelled[n_rows++] = t;
  const std::span<const int64_t> rows = labelled.first(n_rows);
  const int64_t cmax = std::min(T, kHeadChunk);
  const std::span<float> hc = ws.take<float>(size_t(cmax * D)), logits = ws.take<float>(size_t(cmax * V));
  const std::span<int32_t> lc = ws.take<int32_t>(size_t(cmax));
  const std::span<float> dhc = keep ? ws.take<float>(size_t(cmax * D)) : std::span<float>();
  for (size_t c = 0; c < rows.size(); c += kHeadChunk) {
    const int64_t n = int64_t(std::min(rows.size() - c, size_t(kHeadChunk)));
    const std::span<const int64_t> chunk = rows.subspan(c, size_t(n));
    ops::gather_rows(be, acts.hf.data(), D, chunk, hc.data());
    for (int64_t j = 0; j < n; ++j) lc[size_t(j)] = b.labels[size_t(chunk[size_t(j)])];
    ops::linear(be, hc.data(), n, head, nullptr, logits.data());
    if (logits_out) ops::copy(be, logits_out + int64_t(c) * V, logits.data(), n * V);
    const auto ce = tp ? vocab_parallel_cross_entropy(ctx_, logits.data(), n, V, lc.data(), loss_scale)
                       : ops::cross_entropy(be, logits.data(), n, V, lc.data(), loss_scale);
    st.lm_loss_sum += ce.loss, st.loss_tokens += ce.count, st.correct += ce.correct;
    if (!keep) continue;
    ops::linear_backward_weight(be, logits.data(), hc.data(), n, V, D, g_->output.f32());
    ops::linear_backward_input(be, logits.data(), n, w_.output.f32(), V, D, dhc.data(), false);
    ops::scatter_rows(be, dhc.data(), D, chunk, acts.dhf.data());
  }
  if (keep) {  // the head is column-parallel over the vocabulary
    const float* dl = reduce_branch(acts.dhf.data(), T, true, acts.x_next.data());
    if (sp) ops::copy(be, acts.dhf.data(), dl, seq_rows(ctx_, T) * D);
  }
  if (!keep) acts.arena.reset();  // nothing for a backward
  return st;
}

void Stage::backward(const Batch& b, StageActs& acts, float aux_scale, const float* grad_output, float* grad_input) {
  MOE_ASSERT(g_ != nullptr, "backward on an inference stage");
  MOE_ASSERT(!acts.dhf.empty() || b.size() == 0, "backward without a training forward");
  const Backend& be = ctx_.backend;
  Arena& ws = *ctx_.workspace;
  const int64_t T = b.size(), D = cfg_.hidden_size, Ts = seq_rows(ctx_, T);
  const size_t SD = size_t(Ts * D);
  // Final norm, then the layers in reverse, rerunning recomputed chunks first (their
  // activations carved from the workspace, as stage_workspace counts them).
  const std::span<float> dx = acts.hf;  // reuse
  if (last_) {
    ops::rmsnorm_backward(be, acts.x.data(), Ts, D, w_.final_norm.f32(), float(cfg_.norm_epsilon), acts.dhf.data(),
                          dx.data(), g_->final_norm.f32());
    grads_done(kHead);
  } else {
    MOE_ASSERT(grad_output != nullptr, "a pipeline stage without the head needs the next stage's input gradient");
    ops::copy(be, dx.data(), grad_output, Ts * D);
  }
  for (size_t c = chunks_.size(); c-- > 0;) {
    ArenaScope scope(ws);
    const auto [first, end] = chunks_[c];
    if (chunk_recomputed_[c]) {
      std::span<float> xi = ws.take<float>(SD), xo = ws.take<float>(SD);
      ops::copy(be, xi.data(), acts.layers[size_t(first)].x_in.data(), Ts * D);
      for (int i = first; i < end; ++i) {
        layer_forward(i, b, xi.data(), xo.data(), acts.layers[size_t(i)], true, ws);
        std::swap(xi, xo);
      }
    }
    for (int i = end; i-- > first;) {
      layer_backward(i, b, acts.layers[size_t(i)], dx.data(), aux_scale);
      grads_done(i);
    }
  }
  if (!first_) {
    MOE_ASSERT(grad_input != nullptr, "a pipeline stage without the embedding hands its input gradient back");
    ops::copy(be, grad_input, dx.data(), Ts * D);
  } else if (sequence_parallel(ctx_)) {  // the embedding's gradient for every token, gathered whole
    seq_all_gather(ctx_, dx.data(), T, D, acts.x_next.data());
    vocab_parallel_embedding_backward(ctx_, acts.x_next.data(), b.tokens, D, g_->embedding.f32());
  } else if (tp_size(ctx_) > 1) {
    vocab_parallel_embedding_backward(ctx_, dx.data(), b.tokens, D, g_->embedding.f32());
  } else {
    ops::embedding_scatter_add(be, dx.data(), b.tokens, D, g_->embedding.f32());
  }
  if (first_) grads_done(kEmbedding);
  acts.arena.reset();  // the micro-batch's activations are consumed
}

}  // namespace moe::model
