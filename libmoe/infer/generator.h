// Autoregressive generation over a Transformer: one prefill pass over the new prompt tokens,
// then one decode step per token, stopping at a stop id or max_new_tokens. The KV cache is
// reused across calls when the new prompt extends what the cache already holds.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "infer/kv_cache.h"
#include "infer/sampler.h"
#include "model/transformer.h"

namespace moe::infer {

// One request cannot be served (a prompt beyond the context, a line that is not UTF-8), but the
// model and the session are fine: a REPL reports it and reads the next line, a batch writes an
// error entry for that row and goes on. Every other InputError ends the run.
class RequestError : public InputError {
 public:
  using InputError::InputError;
};

// The model's logits hold NaN or +inf (non-finite weights): every later request would print
// garbage too, so this ends the run.
class NonFiniteLogits : public InputError {
 public:
  using InputError::InputError;
};

struct GenerationConfig {
  int max_new_tokens = 512;
  SamplingParams sampling;
  std::vector<int32_t> stop_ids;  // generation ends after producing one of these (not returned)
  bool logprobs = false;
  int top_logprobs = 0;
};

struct TokenLogprob {
  int32_t id;
  float logprob;
  std::vector<std::pair<int32_t, float>> top;
};

struct GenerationResult {
  std::vector<int32_t> ids;                         // generated ids, without the stop id
  std::string finish_reason;                        // "stop" or "length"
  int64_t prompt_tokens = 0, prefilled_tokens = 0;  // prefilled < prompt when the cache was reused
  double prefill_seconds = 0, decode_seconds = 0;
  std::vector<TokenLogprob> logprobs;
};

class Generator {
 public:
  explicit Generator(model::Transformer& model) : model_(model), cache_(model.config(), model.backend().memory) {}

  // Generates a continuation of `prompt` (the whole context). `on_token` is called for each
  // generated id (stop ids excluded); returning false stops generation early.
  // RequestError, before any model work, when the prompt leaves no room in the model's context
  // (max_position_embeddings); max_new_tokens is clipped to the room left, with a warning, as
  // swift does. NonFiniteLogits when a forward pass yields NaN or +inf logits.
  GenerationResult generate(const std::vector<int32_t>& prompt, const GenerationConfig& cfg,
                            const std::function<bool(int32_t)>& on_token = {});
  void reset() { cache_.clear(), cached_.clear(); }

 private:
  model::Transformer& model_;
  KvCache cache_;
  std::vector<int32_t> cached_;  // the ids whose keys/values the cache holds
};

// Generates continuations of several prompts together (swift's --max_batch_size): the prompts
// are prefilled together (packed, up to kPrefillTokens tokens a pass), then every step runs one
// forward over all rows still going (each at its own position, with its own cache), which reads
// the weights once for all of them. A row's tokens, logprobs and finish reason are what
// Generator::generate gives it alone, up to the rounding of the kernels' many-token paths (an
// expert's rows, or a projection's tokens, go through the tiled kernel when there are several).
// A row that cannot be served gets its RequestError's message in (*errors)[i] and an empty
// result; NonFiniteLogits ends the batch.
inline constexpr int64_t kPrefillTokens = 4096;
std::vector<GenerationResult> generate_batch(model::Transformer& model,
                                             const std::vector<std::vector<int32_t>>& prompts,
                                             const GenerationConfig& cfg, std::vector<std::string>* errors);

}  // namespace moe::infer
