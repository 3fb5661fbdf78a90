#include "model/transformer.h"

#include "kernels/ops.h"
#include "model/device_weights.h"
#include "model/rank_state.h"
#include "model/weight_map.h"

namespace moe::model {

void check_state(const ModelConfig& c, const StateDict& state, bool allow_missing_buffers) {
  const WeightMap map = WeightMap::for_config(c);
  for (const auto& rule : map.rules()) {
    auto it = state.find(rule.mcore);
    if (it == state.end()) {
      if (rule.buffer && allow_missing_buffers) continue;
      throw_input("model state lacks tensor '{}' required by the config", rule.mcore);
    }
    if (it->second.shape() != rule.shape)
      throw_input("tensor '{}' has shape {} but the config implies {}", rule.mcore, shape_str(it->second.shape()),
                  shape_str(rule.shape));
  }
}

StageWeights stage_weights(const ModelConfig& c, const StateDict& s, int begin, int end, int experts) {
  StageWeights w;
  for (int i = begin; i < end; ++i) w.layers.push_back(layer_weights(c, s, i, experts));
  w.embedding = s.at(names::kEmbedding);
  w.final_norm = f32_param(s, names::kFinalNorm);
  w.output = c.untie_embeddings_and_output_weights ? s.at(names::kOutput) : w.embedding;
  return w;
}

Transformer::Transformer(ModelConfig config, StateDict state, Backend backend)
    : cfg_(std::move(config)), state_(std::move(state)) {
  check_state(cfg_, state_, false);
  // This rank's slices, from ShardSpec (the whole tensors, uncopied, with one process).
  const StateDict local = rank_state(single_process_spec(cfg_), cfg_, state_, 0, 0, 0);
  Context ctx = single_process_context(cfg_);
  ctx.backend = std::move(backend);
  ctx.workspace = std::make_shared<Arena>(ctx.backend.memory);
  acts_.arena = Arena(ctx.backend.memory);
  StageWeights w = weights_on_device(stage_weights(cfg_, local, 0, cfg_.num_layers), ctx.backend);
  stage_ = std::make_unique<Stage>(std::move(ctx), cfg_, std::move(w), nullptr, TrainOptions{});
}

void Transformer::logits_to(const Batch& b, int64_t rows, float* logits, bool all_logits) {
  const Backend& be = backend();
  if (be.host_memory()) return stage_->forward_logits(b, acts_, logits, all_logits);
  const size_t bytes = size_t(rows * cfg_.vocab_size) * sizeof(float);
  if (logits_.bytes() < bytes) logits_ = DeviceArray(be.memory, bytes, "the logits");
  stage_->forward_logits(b, acts_, logits_.as<float>(), all_logits);
  ops::to_host(be, logits, logits_.get(), bytes);
}

void Transformer::forward(std::span<const int32_t> ids, KvStore& cache, float* logits, bool all_logits) {
  run(ids, &cache, logits, all_logits);
}

void Transformer::forward(std::span<const int32_t> ids, float* logits, bool all_logits) {
  run(ids, nullptr, logits, all_logits);
}

void Transformer::forward_batch(std::span<const int32_t> ids, std::span<const int32_t> cu_seqlens,
                                std::span<KvStore* const> caches, float* logits) {
  if (caches.size() + 1 != cu_seqlens.size()) throw_internal("forward_batch: one cache per sequence");
  positions_.resize(ids.size());
  for (size_t q = 0; q < caches.size(); ++q)
    for (int32_t t = cu_seqlens[q]; t < cu_seqlens[q + 1]; ++t)
      positions_[size_t(t)] = int32_t(caches[q]->length() + (t - cu_seqlens[q]));
  Batch b{ids, positions_, cu_seqlens, {}, nullptr};
  b.caches = caches;
  logits_to(b, int64_t(caches.size()), logits, false);
}

void Transformer::run(std::span<const int32_t> ids, KvStore* cache, float* logits, bool all_logits) {
  const int64_t T = int64_t(ids.size()), pos0 = cache ? cache->length() : 0;
  positions_.resize(size_t(T));
  for (int64_t t = 0; t < T; ++t) positions_[size_t(t)] = int32_t(pos0 + t);
  cu_seqlens_ = {0, int32_t(T)};
  const Batch b{ids, positions_, cu_seqlens_, {}, cache};
  if (T > 0) logits_to(b, all_logits ? T : 1, logits, all_logits);
}

}  // namespace moe::model
