// One micro-batch as every module sees it: prefill, decode and packed training go through the
// same code. Tokens of all sequences are concatenated (cu_seqlens marks where each starts, and
// attention never crosses a boundary); positions are each token's position in its sequence. An
// inference batch carries the KV cache: its tokens follow the cached positions of one sequence,
// or, batched decode, each sequence's tokens follow the positions of its own cache. Under context
// parallelism a training batch is one rank's rows of a micro-batch (model/context_parallel.h).
#pragma once
#include <cstdint>
#include <span>

#include "model/kv_store.h"

namespace moe::model {

// A batch's index arrays as the ops read them.
struct BatchIndex {
  std::span<const int32_t> tokens, positions, cu_seqlens;
};

struct Batch {
  std::span<const int32_t> tokens;      // [T]
  std::span<const int32_t> positions;   // [T]
  std::span<const int32_t> cu_seqlens;  // [S + 1]: 0 .. T
  std::span<const int32_t> labels;      // [T] target per position or -100; empty for inference
  KvStore* cache = nullptr;             // inference: earlier positions' keys and values; appended to
  std::span<KvStore* const> caches;     // batched inference: one cache per sequence (instead of cache)
  // Context parallelism: the whole micro-batch's cu_seqlens ([S + 1]) when this batch is a CP rank's
  // rows of it (cu_seqlens then marks this rank's rows of the same S sequences, positions are the
  // tokens' positions in their whole sequences); empty otherwise.
  std::span<const int32_t> cp_cu_seqlens;
  // On a backend whose memory is not the host's, copies of tokens, positions and cu_seqlens in
  // that memory (the Stage makes them); null on the host, where the ops read the spans above.
  const BatchIndex* device = nullptr;
  int64_t size() const { return int64_t(tokens.size()); }
};

// The index arrays an op is handed: the batch's own, or their device copies.
inline BatchIndex op_index(const Batch& b) {
  return b.device ? *b.device : BatchIndex{b.tokens, b.positions, b.cu_seqlens};
}

}  // namespace moe::model
