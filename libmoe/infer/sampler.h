// Next-token selection from logits: repetition penalty, temperature, top-k, top-p, in the
// order HF generate() applies them. temperature <= 0 means greedy (argmax).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/rng.h"

namespace moe::infer {

struct SamplingParams {
  float temperature = 0.0f;
  int top_k = 0;       // 0 = off
  float top_p = 1.0f;  // 1 = off
  float repetition_penalty = 1.0f;
  uint64_t seed = 42;
};

// Why `value` is not valid for the sampling field `name` (temperature, top_k, top_p,
// repetition_penalty) under HF generate()'s rules with swift's "temperature 0 = greedy" and
// "top_k 0 = off", e.g. "must be > 0 and <= 1"; "" when it is valid. Callers name the flag or
// the file, so the value is checked once, before any model is loaded.
std::string sampling_value_problem(std::string_view name, double value);

class Sampler {
 public:
  explicit Sampler(SamplingParams p) : p_(p), rng_(p.seed) {}
  // `history` = prompt and generated ids so far (for the repetition penalty). `logits` is
  // modified in place (penalised).
  int32_t sample(std::span<float> logits, std::span<const int32_t> history);

 private:
  SamplingParams p_;
  Rng rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

// log_softmax of `logits` at `id`, and the `k` most likely ids with their logprobs.
float token_logprob(std::span<const float> logits, int32_t id, int k, std::vector<std::pair<int32_t, float>>* top);

}  // namespace moe::infer
