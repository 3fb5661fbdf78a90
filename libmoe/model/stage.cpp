#include "model/stage.h"

#include <algorithm>

#include "core/error.h"
#include "kernels/ops.h"

namespace moe::model {

namespace {

bool has_module(const RecomputeOptions& r, const std::string& m) {
  return r.granularity == Recompute::kSelective && std::find(r.modules.begin(), r.modules.end(), m) != r.modules.end();
}

// LM-head tokens per chunk: bounds the [chunk, V] logits buffer.
constexpr int64_t kHeadChunk = 256;

}  // namespace

Stage::Stage(Context ctx, const ModelConfig& c, StageWeights weights, StageWeights* grads, TrainOptions options)
    : ctx_(ctx), cfg_(c), w_(std::move(weights)), g_(grads), opt_(std::move(options)), rope_(cfg_) {
  // Layer chunks: full recompute keeps only each chunk's input and reruns the chunk in the backward.
  const auto& r = opt_.recompute;
  const int L = int(w_.layers.size());
  if (r.granularity == Recompute::kFull && r.method == "uniform") {
    for (int b = 0; b < L; b += r.num_layers) {
      chunks_.emplace_back(b, std::min(L, b + r.num_layers));
      chunk_recomputed_.push_back(true);
    }
  } else {
    for (int b = 0; b < L; ++b) {
      chunks_.emplace_back(b, b + 1);
      chunk_recomputed_.push_back(r.granularity == Recompute::kFull && b < r.num_layers);
    }
  }
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
  for (int64_t t = 0; t < T; ++t) {
    if (b.tokens[size_t(t)] < 0 || b.tokens[size_t(t)] >= V)
      throw_input("token id {} is outside the vocabulary [0, {})", b.tokens[size_t(t)], V);
    if (b.positions[size_t(t)] < 0) throw_internal("negative position id");
  }
  for (int32_t l : b.labels)
    if (l >= V || (l < 0 && l != -100)) throw_input("label {} is outside the vocabulary [0, {}) and not -100", l, V);
}

void Stage::layer_forward(int i, const Batch& b, const float* x_in, float* x_out, LayerActs& a, bool keep,
                          StageActs& buf) {
  const Backend& be = ctx_.backend;
  const int64_t T = b.size(), D = cfg_.hidden_size;
  const float eps = float(cfg_.norm_epsilon);
  const LayerWeights& w = w_.layers[size_t(i)];
  const auto& r = opt_.recompute;
  if (keep) a.x_in.assign(x_in, x_in + T * D);
  std::vector<float>& h = buf.h;
  std::vector<float>& y = buf.y;
  h.resize(size_t(T * D)), y.resize(size_t(T * D));
  ops::rmsnorm(be, x_in, T, D, w.attn.input_norm.f32(), eps, h.data());
  attention_forward(ctx_, cfg_, w.attn, i, h.data(), b, rope_, a.attn, y.data());
  ops::copy(be, x_out, x_in, T * D);
  ops::add(be, x_out, y.data(), T * D);
  if (keep) {
    a.x_mid.assign(x_out, x_out + T * D);
    if (!has_module(r, "layernorm")) a.h1 = h;
  }
  ops::rmsnorm(be, x_out, T, D, w.pre_mlp_norm.f32(), eps, h.data());
  const bool act = keep && has_module(r, "moe_act");
  if (w.is_moe) moe_layer_forward(ctx_, cfg_, opt_.moe, w.moe, h.data(), b, act, a.moe, y.data());
  else swiglu_mlp_forward(ctx_, h.data(), T, w.mlp.fc1, w.mlp.fc2, a.mlp, y.data(), false, act);
  ops::add(be, x_out, y.data(), T * D);
  a.mlp_kept = keep && !has_module(r, w.is_moe ? "moe" : "mlp");
  if (keep && !has_module(r, "layernorm")) a.h2 = h;
  if (keep && !a.mlp_kept) a.moe = {}, a.mlp = {};
  a.complete = keep;
}

void Stage::layer_backward(int i, const Batch& b, LayerActs& a, float* dx, float aux_scale) {
  const Backend& be = ctx_.backend;
  const int64_t T = b.size(), D = cfg_.hidden_size;
  const float eps = float(cfg_.norm_epsilon);
  const LayerWeights& w = w_.layers[size_t(i)];
  LayerWeights& g = g_->layers[size_t(i)];
  MOE_ASSERT(a.complete, "layer {} backward without its activations", i);
  // The normalised inputs, recomputed when the layernorm recompute module dropped them.
  std::vector<float> h1 = a.h1, h2 = a.h2;
  if (h1.empty()) {
    h1.resize(size_t(T * D)), h2.resize(size_t(T * D));
    ops::rmsnorm(be, a.x_in.data(), T, D, w.attn.input_norm.f32(), eps, h1.data());
    ops::rmsnorm(be, a.x_mid.data(), T, D, w.pre_mlp_norm.f32(), eps, h2.data());
  }
  const bool act = has_module(opt_.recompute, "moe_act");
  if (!a.mlp_kept) {  // selective mlp/moe recompute: rerun the branch's forward now
    std::vector<float> y(static_cast<size_t>(T * D));
    if (w.is_moe) moe_layer_forward(ctx_, cfg_, opt_.moe, w.moe, h2.data(), b, act, a.moe, y.data());
    else swiglu_mlp_forward(ctx_, h2.data(), T, w.mlp.fc1, w.mlp.fc2, a.mlp, y.data(), false, act);
  }
  // MLP branch: x_out = x_mid + mlp(norm(x_mid)).
  std::vector<float> dh(static_cast<size_t>(T * D));
  if (w.is_moe) moe_layer_backward(ctx_, cfg_, opt_.moe, w.moe, g.moe, h2.data(), b, a.moe, dx, aux_scale, dh.data());
  else swiglu_mlp_backward(ctx_, h2.data(), T, w.mlp.fc1, w.mlp.fc2, a.mlp, dx, dh.data(), false, g.mlp.fc1, g.mlp.fc2);
  ops::rmsnorm_backward(be, a.x_mid.data(), T, D, w.pre_mlp_norm.f32(), eps, dh.data(), dh.data(),
                        g.pre_mlp_norm.f32());
  ops::add(be, dx, dh.data(), T * D);
  // Attention branch: x_mid = x_in + attn(norm(x_in)).
  attention_backward(ctx_, cfg_, w.attn, g.attn, h1.data(), b, rope_, a.attn, dx, dh.data());
  ops::rmsnorm_backward(be, a.x_in.data(), T, D, w.attn.input_norm.f32(), eps, dh.data(), dh.data(),
                        g.attn.input_norm.f32());
  ops::add(be, dx, dh.data(), T * D);
  a = {};
}

void Stage::run_layers(const Batch& b, StageActs& acts, bool keep, bool inference, StepStats* st) {
  const int64_t T = b.size(), D = cfg_.hidden_size;
  const int L = int(w_.layers.size());
  const size_t E = size_t(std::max<int64_t>(ctx_.local.experts, 0));
  check_batch(b);
  int32_t max_pos = 0;
  for (int32_t p : b.positions) max_pos = std::max(max_pos, p);
  rope_.reserve(int64_t(max_pos) + 1);
  acts.x.resize(size_t(T * D)), acts.x_next.resize(size_t(T * D));
  ops::embedding_gather(ctx_.backend, w_.embedding, b.tokens, acts.x.data());
  if (!inference) acts.layers.resize(size_t(L));
  auto collect = [&](int i) {
    if (!st || !w_.layers[size_t(i)].is_moe) return;
    const RouterSaved& r = acts.layers[size_t(i)].moe.router;
    st->aux_loss += r.aux_loss, st->z_loss += r.z_loss;
    std::copy(r.tokens_per_expert.begin(), r.tokens_per_expert.end(), st->tokens_per_expert.begin() + i * E);
  };
  for (size_t c = 0; c < chunks_.size(); ++c)
    for (int i = chunks_[c].first; i < chunks_[c].second; ++i) {
      if (inference) {  // one scratch for every layer, nothing kept
        layer_forward(i, b, acts.x.data(), acts.x_next.data(), acts.scratch, false, acts);
        std::swap(acts.x, acts.x_next);
        continue;
      }
      const bool keep_layer = keep && !chunk_recomputed_[c];
      // A recomputed chunk keeps only its first layer's input; the MoE statistics are read
      // before the activations go.
      LayerActs& a = acts.layers[size_t(i)];
      layer_forward(i, b, acts.x.data(), acts.x_next.data(), a, true, acts);
      collect(i);
      if (!keep_layer) {
        if (keep && i == chunks_[c].first) {
          std::vector<float> x_in = std::move(a.x_in);
          a = {};
          a.x_in = std::move(x_in);
        } else {
          a = {};
        }
      }
      std::swap(acts.x, acts.x_next);
    }
  if (b.cache) b.cache->advance(T);
}

void Stage::forward_logits(const Batch& b, StageActs& acts, float* logits, bool all_logits) {
  const int64_t T = b.size(), D = cfg_.hidden_size;
  if (T == 0) return;
  if (b.cache) b.cache->reserve(b.cache->length() + T);
  run_layers(b, acts, false, true, nullptr);
  const int64_t first = all_logits ? 0 : T - 1, n = T - first;
  acts.hf.resize(size_t(n * D));
  ops::rmsnorm(ctx_.backend, acts.x.data() + first * D, n, D, w_.final_norm.f32(), float(cfg_.norm_epsilon),
               acts.hf.data());
  ops::linear(ctx_.backend, acts.hf.data(), n, w_.output, nullptr, logits);
}

StepStats Stage::forward_loss(const Batch& b, StageActs& acts, bool keep, float loss_scale, float* logits_out) {
  const Backend& be = ctx_.backend;
  const int64_t T = b.size(), D = cfg_.hidden_size, V = cfg_.vocab_size;
  StepStats st;
  st.tokens_per_expert.assign(w_.layers.size() * size_t(std::max<int64_t>(ctx_.local.experts, 0)), 0);
  run_layers(b, acts, keep, false, &st);

  // Final norm and LM head with the loss, chunk by chunk over the labelled tokens only.
  const float eps = float(cfg_.norm_epsilon);
  acts.hf.resize(size_t(T * D));
  ops::rmsnorm(be, acts.x.data(), T, D, w_.final_norm.f32(), eps, acts.hf.data());
  if (keep) acts.dhf.assign(size_t(T * D), 0.0f);
  std::vector<int64_t> rows;
  for (int64_t t = 0; t < T; ++t)
    if (b.labels[size_t(t)] >= 0) rows.push_back(t);
  std::vector<float> hc, logits, dhc;
  std::vector<int32_t> lc;
  for (size_t c = 0; c < rows.size(); c += kHeadChunk) {
    const int64_t n = int64_t(std::min(rows.size() - c, size_t(kHeadChunk)));
    const std::span<const int64_t> chunk(rows.data() + c, size_t(n));
    hc.resize(size_t(n * D)), logits.resize(size_t(n * V)), lc.resize(size_t(n));
    ops::gather_rows(be, acts.hf.data(), D, chunk, hc.data());
    for (int64_t j = 0; j < n; ++j) lc[size_t(j)] = b.labels[size_t(chunk[size_t(j)])];
    ops::linear(be, hc.data(), n, w_.output, nullptr, logits.data());
    if (logits_out) ops::copy(be, logits_out + int64_t(c) * V, logits.data(), n * V);
    const auto ce = ops::cross_entropy(be, logits.data(), n, V, lc.data(), loss_scale);
    st.lm_loss_sum += ce.loss, st.loss_tokens += ce.count, st.correct += ce.correct;
    if (!keep) continue;
    ops::linear_backward_weight(be, logits.data(), hc.data(), n, V, D, g_->output.f32());
    dhc.resize(size_t(n * D));
    ops::linear_backward_input(be, logits.data(), n, w_.output.f32(), V, D, dhc.data(), false);
    ops::scatter_rows(be, dhc.data(), D, chunk, acts.dhf.data());
  }
  return st;
}

void Stage::backward(const Batch& b, StageActs& acts, float aux_scale) {
  MOE_ASSERT(g_ != nullptr, "backward on an inference stage");
  const Backend& be = ctx_.backend;
  const int64_t T = b.size(), D = cfg_.hidden_size;
  // Final norm, then the layers in reverse, rerunning recomputed chunks first.
  std::vector<float>& dx = acts.hf;  // reuse
  ops::rmsnorm_backward(be, acts.x.data(), T, D, w_.final_norm.f32(), float(cfg_.norm_epsilon), acts.dhf.data(),
                        dx.data(), g_->final_norm.f32());
  for (size_t c = chunks_.size(); c-- > 0;) {
    const auto [first, end] = chunks_[c];
    if (chunk_recomputed_[c]) {
      std::vector<float> xi = acts.layers[size_t(first)].x_in, xo(static_cast<size_t>(T * D));
      for (int i = first; i < end; ++i) {
        layer_forward(i, b, xi.data(), xo.data(), acts.layers[size_t(i)], true, acts);
        std::swap(xi, xo);
      }
    }
    for (int i = end; i-- > first;) layer_backward(i, b, acts.layers[size_t(i)], dx.data(), aux_scale);
  }
  ops::embedding_scatter_add(be, dx.data(), b.tokens, D, g_->embedding.f32());
}

}  // namespace moe::model
