#include "model/rank_state.h"

#include <cstring>

#include "core/error.h"

namespace moe::model {

ShardSpec single_process_spec(const ModelConfig& c) { return ShardSpec(c, {}, 1); }

StateDict rank_state(const ShardSpec& spec, const ModelConfig& c, const StateDict& full, int tp, int pp, int ep) {
  StateDict out;
  for (const auto& [name, t] : full) {
    Tensor src = t;
    const bool vocab = name == names::kEmbedding || name == names::kOutput;
    if (vocab && src.dim(0) < spec.padded_vocab()) {  // Megatron's zero rows up to the padded vocabulary
      Tensor padded({spec.padded_vocab(), src.dim(1)}, src.dtype());
      std::memcpy(padded.raw(), src.raw(), src.nbytes());
      src = padded;
    }
    for (auto& piece : spec.shard(name, src, tp, pp, ep)) {
      // The engine reads the model's own rows of a one-rank vocabulary.
      if (vocab && spec.layout().tp == 1) piece.tensor = piece.tensor.slice_rows(0, c.vocab_size);
      out.emplace(std::move(piece.name), std::move(piece.tensor));
    }
  }
  return out;
}

}  // namespace moe::model
