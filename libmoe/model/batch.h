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
  int64_t size() const { return int64_t(tokens.size()); }
};

}  // namespace moe::model
