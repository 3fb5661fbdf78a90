#include "model/train_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "kernels/cpu/backward.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gemm.h"
#include "model/attention_train.h"
#include "model/moe_layer_train.h"
#include "model/weight_map.h"

namespace moe::model {

namespace k = kernels::cpu;

struct TrainModel::LayerActs {
  std::vector<float> x_in, h1, x_mid, h2;  // h1, h2 empty when the norms are recomputed
  AttentionSaved attn;
  MoeSaved moe;
  SwigluSaved mlp;
  bool mlp_kept = false;  // false: the MLP/MoE branch reruns in the backward (selective mlp/moe)
  bool complete = false;  // false: only x_in is kept (full recompute)
};

namespace {

bool has_module(const RecomputeOptions& r, const std::string& m) {
  return r.granularity == "selective" && std::find(r.modules.begin(), r.modules.end(), m) != r.modules.end();
}

// LM-head tokens per chunk: bounds the [chunk, V] logits buffer.
constexpr int64_t kHeadChunk = 256;

}  // namespace

void StepStats::add(const StepStats& o) {
  lm_loss_sum += o.lm_loss_sum, loss_tokens += o.loss_tokens, correct += o.correct;
  aux_loss += o.aux_loss, z_loss += o.z_loss;
  if (tokens_per_expert.size() < o.tokens_per_expert.size()) tokens_per_expert.resize(o.tokens_per_expert.size());
  for (size_t i = 0; i < o.tokens_per_expert.size(); ++i) tokens_per_expert[i] += o.tokens_per_expert[i];
}

void validate_train_options(const TrainOptions& o, const ModelConfig& c) {
  const auto& r = o.recompute;
  if (r.granularity != "none" && r.granularity != "selective" && r.granularity != "full")
    throw_input("--recompute_granularity '{}' is not one of none, selective, full", r.granularity);
  if (r.granularity == "full") {
    if (r.method != "uniform" && r.method != "block")
      throw_input("--recompute_method '{}' is not one of uniform, block", r.method);
    if (r.num_layers < 1 || r.num_layers > c.num_layers)
      throw_input("--recompute_num_layers {} must be in 1..{} (the model's layers)", r.num_layers, c.num_layers);
  }
  for (const auto& m : r.modules)
    if (m != "core_attn" && m != "moe_act" && m != "layernorm" && m != "mlp" && m != "moe")
      throw_input("--recompute_modules '{}' is not supported; use core_attn, moe_act, layernorm, mlp or moe", m);
  const auto& m = o.moe;
  if (m.load_balancing_type != "aux_loss" && m.load_balancing_type != "seq_aux_loss" &&
      m.load_balancing_type != "none")
    throw_input("--moe_router_load_balancing_type '{}' is not one of aux_loss, seq_aux_loss, none",
                m.load_balancing_type);
  if (!(m.aux_loss_coeff >= 0 && std::isfinite(m.aux_loss_coeff)))
    throw_input("--moe_aux_loss_coeff must be a finite number >= 0, got {}", m.aux_loss_coeff);
  if (!(m.z_loss_coeff >= 0 && std::isfinite(m.z_loss_coeff)))
    throw_input("--moe_z_loss_coeff must be a finite number >= 0, got {}", m.z_loss_coeff);
  if (!(m.capacity_factor >= 0 && std::isfinite(m.capacity_factor)))  // 0: dropless (the flag not given)
    throw_input("--moe_expert_capacity_factor must be a finite number > 0, got {}", m.capacity_factor);
  if (!(m.bias_update_rate >= 0 && std::isfinite(m.bias_update_rate)))
    throw_input("--moe_router_bias_update_rate must be a finite number >= 0, got {}", m.bias_update_rate);
  if (m.token_drop_policy != "probs" && m.token_drop_policy != "position")
    throw_input("--moe_token_drop_policy '{}' is not one of probs, position", m.token_drop_policy);
  if (m.pad_expert_input_to_capacity && m.capacity_factor <= 0)
    throw_input("--moe_pad_expert_input_to_capacity needs --moe_expert_capacity_factor");
}

TrainModel::TrainModel(ModelConfig config, const StateDict& params, TrainOptions options)
    : cfg_(std::move(config)), opt_(std::move(options)), rope_(cfg_) {
  validate_train_options(opt_, cfg_);
  // Training with the bias gives the model one (saved with it); a model that has one routes with
  // it whether or not this run updates it.
  if (opt_.moe.enable_expert_bias && cfg_.num_experts > 0) cfg_.moe_router_enable_expert_bias = true;
  const WeightMap map = WeightMap::for_config(cfg_);
  for (const auto& rule : map.rules()) {
    auto it = params.find(rule.mcore);
    if (rule.buffer) {  // not trained by the optimizer; zeros when the checkpoint has none yet
      Tensor b(rule.shape, DType::F32);
      if (it != params.end()) {
        if (it->second.shape() != rule.shape)
          throw_input("tensor '{}' has shape {} but the config implies {}", rule.mcore, shape_str(it->second.shape()),
                      shape_str(rule.shape));
        Tensor src = it->second.dtype() == DType::F32 ? it->second : it->second.to(DType::F32);
        std::memcpy(b.raw(), src.raw(), b.nbytes());
      }
      buffers_.emplace(rule.mcore, std::move(b));
      continue;
    }
    if (it == params.end()) throw_input("model state lacks tensor '{}' required by the config", rule.mcore);
    if (it->second.shape() != rule.shape)
      throw_input("tensor '{}' has shape {} but the config implies {}", rule.mcore, shape_str(it->second.shape()),
                  shape_str(rule.shape));
    // Always a fresh copy: the optimizer updates these in place (inputs may be mapped files).
    Tensor p(rule.shape, DType::F32);
    Tensor src = it->second.dtype() == DType::F32 ? it->second : it->second.to(DType::F32);
    std::memcpy(p.raw(), src.raw(), p.nbytes());
    params_.emplace(rule.mcore, std::move(p));
    grads_.emplace(rule.mcore, Tensor(rule.shape, DType::F32));
  }
  StateDict with_buffers = params_;
  with_buffers.insert(buffers_.begin(), buffers_.end());
  ModelConfig no_buffers = cfg_;  // gradients exist for parameters only
  no_buffers.moe_router_enable_expert_bias = false;
  for (int i = 0; i < cfg_.num_layers; ++i) {
    w_.push_back(layer_weights(cfg_, with_buffers, i));
    g_.push_back(layer_weights(no_buffers, grads_, i));
  }
  embedding_ = params_.at(names::kEmbedding), d_embedding_ = grads_.at(names::kEmbedding);
  final_norm_ = params_.at(names::kFinalNorm), d_final_norm_ = grads_.at(names::kFinalNorm);
  const bool untied = cfg_.untie_embeddings_and_output_weights;
  output_ = untied ? params_.at(names::kOutput) : embedding_;
  d_output_ = untied ? grads_.at(names::kOutput) : d_embedding_;

  // Layer chunks: full recompute keeps only each chunk's input and reruns the chunk in the backward.
  const auto& r = opt_.recompute;
  const int L = cfg_.num_layers;
  if (r.granularity == "full" && r.method == "uniform") {
    for (int b = 0; b < L; b += r.num_layers) {
      chunks_.emplace_back(b, std::min(L, b + r.num_layers));
      chunk_recomputed_.push_back(true);
    }
  } else {
    for (int b = 0; b < L; ++b) {
      chunks_.emplace_back(b, b + 1);
      chunk_recomputed_.push_back(r.granularity == "full" && b < r.num_layers);
    }
  }
}

void TrainModel::zero_grad() {
  for (auto& [name, g] : grads_) std::memset(g.raw(), 0, g.nbytes());
}

float* TrainModel::expert_bias(int layer) {
  Tensor& b = w_[size_t(layer)].moe.expert_bias;
  return b.defined() && b.numel() > 0 ? b.f32() : nullptr;
}

void TrainModel::update_expert_bias(const std::vector<int64_t>& tpe) {
  if (!opt_.moe.enable_expert_bias) return;
  const size_t E = size_t(cfg_.num_experts);
  for (int i = 0; i < cfg_.num_layers; ++i)
    if (cfg_.is_moe_layer(i))
      model::update_expert_bias(expert_bias(i), std::span(tpe).subspan(size_t(i) * E, E), opt_.moe.bias_update_rate);
}

void TrainModel::layer_forward(int i, const MicroBatchView& mb, const float* x_in, float* x_out, LayerActs& a,
                               bool keep) {
  const int64_t T = int64_t(mb.tokens.size()), D = cfg_.hidden_size;
  const float eps = float(cfg_.norm_epsilon);
  const LayerWeights& w = w_[size_t(i)];
  const auto& r = opt_.recompute;
  const PackedPositions pos{mb.position_ids, mb.cu_seqlens};
  a.x_in.assign(x_in, x_in + T * D);
  std::vector<float> h(static_cast<size_t>(T * D)), y(static_cast<size_t>(T * D));
  k::rmsnorm(x_in, T, D, w.attn.input_norm.f32(), eps, h.data());
  attention_train_forward(cfg_, w.attn, h.data(), T, pos, rope_, a.attn, y.data());
  std::memcpy(x_out, x_in, size_t(T * D) * sizeof(float));
  k::add_inplace(x_out, y.data(), T * D);
  if (keep) {
    a.x_mid.assign(x_out, x_out + T * D);
    if (!has_module(r, "layernorm")) a.h1 = h;
  }
  k::rmsnorm(x_out, T, D, w.pre_mlp_norm.f32(), eps, h.data());
  const bool act = has_module(r, "moe_act");
  if (w.is_moe) {
    moe_layer_train_forward(cfg_, opt_.moe, w.moe, expert_bias(i), h.data(), T, mb.cu_seqlens, act, a.moe, y.data());
  } else {
    swiglu_mlp_train_forward(h.data(), T, D, cfg_.ffn_hidden_size, w.mlp.fc1.f32(), w.mlp.fc2.f32(), a.mlp, y.data(),
                             false, act);
  }
  k::add_inplace(x_out, y.data(), T * D);
  a.mlp_kept = keep && !has_module(r, w.is_moe ? "moe" : "mlp");
  if (keep && !has_module(r, "layernorm")) a.h2 = std::move(h);
  if (!keep) {
    a.attn = {}, a.moe = {}, a.mlp = {};
  } else if (!a.mlp_kept) {
    a.moe = {}, a.mlp = {};
  }
  a.complete = keep;
}

void TrainModel::layer_backward(int i, const MicroBatchView& mb, LayerActs& a, float* dx, float aux_scale) {
  const int64_t T = int64_t(mb.tokens.size()), D = cfg_.hidden_size;
  const float eps = float(cfg_.norm_epsilon);
  const LayerWeights& w = w_[size_t(i)];
  LayerWeights& g = g_[size_t(i)];
  const PackedPositions pos{mb.position_ids, mb.cu_seqlens};
  MOE_ASSERT(a.complete, "layer {} backward without its activations", i);
  // The normalised inputs, recomputed when the layernorm recompute module dropped them.
  std::vector<float> h1 = a.h1, h2 = a.h2;
  if (h1.empty()) {
    h1.resize(size_t(T * D)), h2.resize(size_t(T * D));
    k::rmsnorm(a.x_in.data(), T, D, w.attn.input_norm.f32(), eps, h1.data());
    k::rmsnorm(a.x_mid.data(), T, D, w.pre_mlp_norm.f32(), eps, h2.data());
  }
  const bool act = has_module(opt_.recompute, "moe_act");
  const float* bias = expert_bias(i);
  if (!a.mlp_kept) {  // selective mlp/moe recompute: rerun the branch's forward now
    std::vector<float> y(static_cast<size_t>(T * D));
    if (w.is_moe) moe_layer_train_forward(cfg_, opt_.moe, w.moe, bias, h2.data(), T, mb.cu_seqlens, act, a.moe, y.data());
    else swiglu_mlp_train_forward(h2.data(), T, D, cfg_.ffn_hidden_size, w.mlp.fc1.f32(), w.mlp.fc2.f32(), a.mlp,
                                  y.data(), false, act);
  }
  // MLP branch: x_out = x_mid + mlp(norm(x_mid)).
  std::vector<float> dh(static_cast<size_t>(T * D));
  if (w.is_moe)
    moe_layer_train_backward(cfg_, opt_.moe, w.moe, g.moe, h2.data(), T, mb.cu_seqlens, a.moe, dx, aux_scale,
                             dh.data());
  else
    swiglu_mlp_train_backward(h2.data(), T, D, cfg_.ffn_hidden_size, w.mlp.fc1.f32(), w.mlp.fc2.f32(), a.mlp, dx,
                              dh.data(), false, g.mlp.fc1.f32(), g.mlp.fc2.f32());
  k::rmsnorm_backward(a.x_mid.data(), T, D, w.pre_mlp_norm.f32(), eps, dh.data(), dh.data(), g.pre_mlp_norm.f32());
  k::add_inplace(dx, dh.data(), T * D);
  // Attention branch: x_mid = x_in + attn(norm(x_in)).
  attention_train_backward(cfg_, w.attn, g.attn, h1.data(), T, pos, rope_, a.attn, dx, dh.data());
  k::rmsnorm_backward(a.x_in.data(), T, D, w.attn.input_norm.f32(), eps, dh.data(), dh.data(),
                      g.attn.input_norm.f32());
  k::add_inplace(dx, dh.data(), T * D);
  a = {};
}

StepStats TrainModel::forward_backward(const MicroBatchView& mb, float loss_scale, float aux_scale) {
  return run(mb, true, loss_scale, aux_scale);
}

StepStats TrainModel::evaluate(const MicroBatchView& mb) { return run(mb, false, 0.0f, 0.0f); }

StepStats TrainModel::run(const MicroBatchView& mb, bool backward, float loss_scale, float aux_scale) {
  const int64_t T = int64_t(mb.tokens.size()), D = cfg_.hidden_size, V = cfg_.vocab_size;
  const int L = cfg_.num_layers;
  const size_t E = size_t(std::max(cfg_.num_experts, 0));
  if (mb.labels.size() != size_t(T) || mb.position_ids.size() != size_t(T))
    throw_internal("micro-batch: {} tokens but {} labels and {} position ids", T, mb.labels.size(),
                   mb.position_ids.size());
  if (mb.cu_seqlens.size() < 2 || mb.cu_seqlens.front() != 0 || mb.cu_seqlens.back() != T)
    throw_internal("micro-batch: cu_seqlens must run from 0 to {} tokens", T);
  for (size_t s = 1; s < mb.cu_seqlens.size(); ++s)
    if (mb.cu_seqlens[s] < mb.cu_seqlens[s - 1]) throw_internal("micro-batch: cu_seqlens not increasing");
  int32_t max_pos = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (mb.tokens[size_t(t)] < 0 || mb.tokens[size_t(t)] >= V)
      throw_input("token id {} is outside the vocabulary [0, {})", mb.tokens[size_t(t)], V);
    if (mb.labels[size_t(t)] >= V || (mb.labels[size_t(t)] < 0 && mb.labels[size_t(t)] != -100))
      throw_input("label {} is outside the vocabulary [0, {}) and not -100", mb.labels[size_t(t)], V);
    if (mb.position_ids[size_t(t)] < 0) throw_internal("negative position id");
    max_pos = std::max(max_pos, mb.position_ids[size_t(t)]);
  }
  rope_.reserve(int64_t(max_pos) + 1);

  StepStats st;
  st.tokens_per_expert.assign(size_t(L) * E, 0);
  // Forward: the residual stream through every layer.
  std::vector<float> x(static_cast<size_t>(T * D)), x_next(static_cast<size_t>(T * D));
  const float* emb = embedding_.f32();
  for (int64_t t = 0; t < T; ++t) std::memcpy(x.data() + t * D, emb + int64_t(mb.tokens[size_t(t)]) * D, size_t(D) * 4);
  std::vector<LayerActs> acts(static_cast<size_t>(L));
  auto collect = [&](int i) {
    if (!cfg_.is_moe_layer(i)) return;
    const RouterSaved& r = acts[size_t(i)].moe.router;
    st.aux_loss += r.aux_loss, st.z_loss += r.z_loss;
    std::copy(r.tokens_per_expert.begin(), r.tokens_per_expert.end(), st.tokens_per_expert.begin() + i * E);
  };
  for (size_t c = 0; c < chunks_.size(); ++c)
    for (int i = chunks_[c].first; i < chunks_[c].second; ++i) {
      const bool keep = backward && !chunk_recomputed_[c];
      // A recomputed chunk keeps only its first layer's input; the MoE statistics are read
      // before the activations go.
      layer_forward(i, mb, x.data(), x_next.data(), acts[size_t(i)], true);
      collect(i);
      if (!keep) {
        LayerActs& a = acts[size_t(i)];
        if (backward && i == chunks_[c].first) {
          std::vector<float> x_in = std::move(a.x_in);
          a = {};
          a.x_in = std::move(x_in);
        } else {
          a = {};
        }
      }
      std::swap(x, x_next);
    }

  // Final norm and LM head with the loss, chunk by chunk over the labelled tokens only.
  const float eps = float(cfg_.norm_epsilon);
  std::vector<float> hf(static_cast<size_t>(T * D));
  k::rmsnorm(x.data(), T, D, final_norm_.f32(), eps, hf.data());
  std::vector<float> dhf(static_cast<size_t>(T * D), 0.0f);
  std::vector<int64_t> rows;
  for (int64_t t = 0; t < T; ++t)
    if (mb.labels[size_t(t)] >= 0) rows.push_back(t);
  std::vector<float> hc, logits, dhc;
  std::vector<int32_t> lc;
  for (size_t b = 0; b < rows.size(); b += kHeadChunk) {
    const int64_t n = int64_t(std::min(rows.size() - b, size_t(kHeadChunk)));
    hc.resize(size_t(n * D)), logits.resize(size_t(n * V)), lc.resize(size_t(n));
    for (int64_t j = 0; j < n; ++j) {
      std::memcpy(hc.data() + j * D, hf.data() + rows[b + size_t(j)] * D, size_t(D) * 4);
      lc[size_t(j)] = mb.labels[size_t(rows[b + size_t(j)])];
    }
    k::gemm_nt(n, V, D, hc.data(), output_.f32(), logits.data(), false);
    auto ce = k::cross_entropy_forward_backward(logits.data(), n, V, lc.data(), loss_scale);
    st.lm_loss_sum += ce.loss, st.loss_tokens += ce.count, st.correct += ce.correct;
    if (!backward) continue;
    k::gemm_tn(V, D, n, logits.data(), hc.data(), d_output_.f32(), true);
    dhc.resize(size_t(n * D));
    k::gemm_nn(n, D, V, logits.data(), output_.f32(), dhc.data(), false);
    for (int64_t j = 0; j < n; ++j)
      std::memcpy(dhf.data() + rows[b + size_t(j)] * D, dhc.data() + j * D, size_t(D) * 4);
  }
  if (!backward) return st;

  // Backward: final norm, then the layers in reverse, rerunning recomputed chunks first.
  std::vector<float>& dx = hf;  // reuse
  k::rmsnorm_backward(x.data(), T, D, final_norm_.f32(), eps, dhf.data(), dx.data(), d_final_norm_.f32());
  for (size_t c = chunks_.size(); c-- > 0;) {
    const auto [b, e] = chunks_[c];
    if (chunk_recomputed_[c]) {
      std::vector<float> xi = acts[size_t(b)].x_in, xo(static_cast<size_t>(T * D));
      for (int i = b; i < e; ++i) {
        layer_forward(i, mb, xi.data(), xo.data(), acts[size_t(i)], true);
        std::swap(xi, xo);
      }
    }
    for (int i = e; i-- > b;) layer_backward(i, mb, acts[size_t(i)], dx.data(), aux_scale);
  }
  float* dE = d_embedding_.f32();
  for (int64_t t = 0; t < T; ++t) k::add_inplace(dE + int64_t(mb.tokens[size_t(t)]) * D, dx.data() + t * D, D);
  return st;
}

}  // namespace moe::model
