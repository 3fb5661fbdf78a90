// The decoder-only transformer (GPTModel) for inference: a one-stage Stage over the canonical
// state (weights used in place, in their stored dtype), driven token batch by token batch with
// a KV cache. Used by the generator; the trainer drives the same Stage (train_model.h).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "model/kv_store.h"
#include "model/stage.h"

namespace moe::model {

class Transformer {
 public:
  // Checks that `state` holds every canonical tensor with the shape `config` implies
  // (InputError naming the tensor); keeps references to the tensors (no copy). On a backend
  // whose memory is not the host's (kernels/device.h) the forward runs there, on a copy of the
  // weights in that memory; logits still come back to the host.
  Transformer(ModelConfig config, StateDict state, Backend backend = {});

  const ModelConfig& config() const { return cfg_; }
  // Where the forward runs; KV caches handed to it live in backend().memory (infer::KvCache).
  const Backend& backend() const { return stage_->context().backend; }
  const StateDict& state() const { return state_; }

  // Runs `ids` at positions cache.length() .. and appends them to the cache (infer::KvCache
  // sized for this config). Writes logits [V] of the last token to `logits` (or [T, V] of every
  // token with all_logits).
  void forward(std::span<const int32_t> ids, KvStore& cache, float* logits, bool all_logits = false);
  // Without a cache: `ids` are one sequence from position 0 (the logits equal those of the
  // call above with an empty cache).
  void forward(std::span<const int32_t> ids, float* logits, bool all_logits = false);
  // Batched decode: sequence q's tokens ids[cu_seqlens[q] .. cu_seqlens[q+1]) run at positions
  // caches[q]->length() .. and join that cache. Writes the logits of each sequence's last token,
  // [S, V], each equal to what forward() with that sequence and cache alone gives.
  void forward_batch(std::span<const int32_t> ids, std::span<const int32_t> cu_seqlens,
                     std::span<KvStore* const> caches, float* logits);

 private:
  void run(std::span<const int32_t> ids, KvStore* cache, float* logits, bool all_logits);
  // The stage's logits ([rows, V]) into the caller's host buffer, through a device buffer when
  // the backend has its own memory.
  void logits_to(const Batch& b, int64_t rows, float* logits, bool all_logits);

  ModelConfig cfg_;
  StateDict state_;
  std::unique_ptr<Stage> stage_;
  StageActs acts_;  // buffers reused from call to call
  std::vector<int32_t> positions_, cu_seqlens_;
  DeviceArray logits_;  // a device backend: the logits before they come back
};

// Checks `state` against the tensors `c` implies (buffers may be absent when `allow_missing_buffers`);
// InputError naming the tensor.
void check_state(const ModelConfig& c, const StateDict& state, bool allow_missing_buffers);

// The stage weights of layers [begin, end) (+ embedding, final norm, output) as views of `s`.
StageWeights stage_weights(const ModelConfig& c, const StateDict& s, int begin, int end, int experts = -1);

}  // namespace moe::model
