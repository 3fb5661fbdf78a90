#include "model/transformer.h"

#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/linear.h"
#include "model/attention.h"
#include "model/mlp.h"
#include "model/moe_layer.h"
#include "model/weight_map.h"

namespace moe::model {

Transformer::Transformer(ModelConfig config, StateDict state)
    : cfg_(std::move(config)), state_(std::move(state)), rope_(cfg_) {
  const WeightMap map = WeightMap::for_config(cfg_);
  for (const auto& rule : map.rules()) {
    auto it = state_.find(rule.mcore);
    if (it == state_.end()) throw_input("model state lacks tensor '{}' required by the config", rule.mcore);
    if (it->second.shape() != rule.shape)
      throw_input("tensor '{}' has shape {} but the config implies {}", rule.mcore, shape_str(it->second.shape()),
                  shape_str(rule.shape));
  }
  for (int i = 0; i < cfg_.num_layers; ++i) layers_.push_back(layer_weights(cfg_, state_, i));
  embedding_ = state_.at(names::kEmbedding);
  final_norm_ = f32_param(state_, names::kFinalNorm);
  output_ = cfg_.untie_embeddings_and_output_weights ? state_.at(names::kOutput) : embedding_;
}

void Transformer::forward(std::span<const int32_t> ids, KvCache& cache, float* logits, bool all_logits) {
  namespace k = kernels::cpu;
  const int64_t T = int64_t(ids.size()), D = cfg_.hidden_size, V = cfg_.vocab_size;
  if (T == 0) return;
  const float eps = float(cfg_.norm_epsilon);
  for (int32_t id : ids)
    if (id < 0 || id >= V) throw_input("token id {} is outside the vocabulary [0, {})", id, V);
  cache.reserve(cache.length() + T);
  rope_.reserve(cache.length() + T);

  // Reused across calls: fresh multi-megabyte buffers per prefill cost page faults and zeroing.
  thread_local std::vector<float> x, h, y, scratch;
  x.resize(size_t(T * D)), h.resize(size_t(T * D)), y.resize(size_t(T * D));
  const size_t row_bytes = size_t(D) * dtype_size(embedding_.dtype());
  for (int64_t t = 0; t < T; ++t)
    convert_to_f32(static_cast<const char*>(embedding_.raw()) + size_t(ids[size_t(t)]) * row_bytes,
                   embedding_.dtype(), x.data() + t * D, size_t(D));

  for (int i = 0; i < cfg_.num_layers; ++i) {
    const LayerWeights& w = layers_[size_t(i)];
    k::rmsnorm(x.data(), T, D, w.attn.input_norm.f32(), eps, h.data());
    attention_forward(cfg_, w.attn, i, h.data(), T, cache, rope_, y.data());
    k::add_inplace(x.data(), y.data(), T * D);
    k::rmsnorm(x.data(), T, D, w.pre_mlp_norm.f32(), eps, h.data());
    if (w.is_moe) moe_layer_forward(cfg_, w.moe, h.data(), T, y.data());
    else swiglu_mlp(h.data(), T, w.mlp.fc1, w.mlp.fc2, y.data(), false, scratch);
    k::add_inplace(x.data(), y.data(), T * D);
  }
  cache.advance(T);

  const int64_t first = all_logits ? 0 : T - 1, n = T - first;
  k::rmsnorm(x.data() + first * D, n, D, final_norm_.f32(), eps, h.data());
  k::linear(h.data(), n, output_, nullptr, logits);
}

}  // namespace moe::model
