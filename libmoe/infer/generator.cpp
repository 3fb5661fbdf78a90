#include "infer/generator.h"

#include <algorithm>
#include <chrono>

#include <cmath>

#include "core/error.h"
#include "core/log.h"

namespace moe::infer {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// -inf is a legitimate mask value; NaN, +inf or nothing but -inf cannot be sampled from, and
// argmax over them picks id 0 (which streams NUL bytes).
void require_finite(std::span<const float> logits, int64_t position) {
  bool any_finite = false;
  for (float l : logits) {
    if (std::isnan(l) || l == INFINITY)
      throw NonFiniteLogits(
          fmt::format("the model's logits at position {} are {}: its weights (or config.json) hold "
                      "non-finite values; check the checkpoint (e.g. an sft run that diverged)",
                      position, std::isnan(l) ? "NaN" : "+inf"));
    any_finite = any_finite || std::isfinite(l);
  }
  if (!any_finite)
    throw NonFiniteLogits(
        fmt::format("the model's logits at position {} are all -inf: its weights (or config.json) "
                    "hold non-finite values; check the checkpoint",
                    position));
}
}  // namespace

GenerationResult Generator::generate(const std::vector<int32_t>& prompt, const GenerationConfig& cfg,
                                     const std::function<bool(int32_t)>& on_token) {
  if (prompt.empty()) throw_input("the prompt is empty: nothing to continue from");
  const int64_t V = model_.config().vocab_size;
  GenerationResult res;
  res.prompt_tokens = int64_t(prompt.size());
  // Refuse before the prefill: a prompt past the context is slow (quadratic attention), needs
  // memory for all of it, and rope positions beyond max_position_embeddings were never trained.
  const int64_t ctx = model_.config().max_position_embeddings;
  int max_new = cfg.max_new_tokens;
  if (ctx > 0) {
    if (res.prompt_tokens >= ctx)
      throw RequestError(
          fmt::format("the prompt is {} tokens; the model's context (max_position_embeddings in "
                      "config.json) is {} tokens, answer included: shorten the prompt",
                      res.prompt_tokens, ctx));
    if (int64_t(max_new) > ctx - res.prompt_tokens) {
      max_new = int(ctx - res.prompt_tokens);
      log().warn("max_model_len({}) - num_tokens({}) < max_new_tokens({}): generating at most {} tokens", ctx,
                 res.prompt_tokens, cfg.max_new_tokens, max_new);
    }
  }

  // Reuse the cached prefix; always recompute at least the last prompt token for its logits.
  size_t keep = 0;
  while (keep < cached_.size() && keep < prompt.size() && cached_[keep] == prompt[keep]) ++keep;
  keep = std::min(keep, prompt.size() - 1);
  cache_.truncate(int64_t(keep));
  cached_.resize(keep);

  std::vector<float> logits(static_cast<size_t>(V));
  std::vector<int32_t> history = prompt;
  Sampler sampler(cfg.sampling);
  auto t0 = std::chrono::steady_clock::now();
  std::span<const int32_t> fresh(prompt.data() + keep, prompt.size() - keep);
  model_.forward(fresh, cache_, logits.data());
  cached_.insert(cached_.end(), fresh.begin(), fresh.end());
  require_finite(logits, res.prompt_tokens - 1);
  res.prefilled_tokens = int64_t(fresh.size());
  res.prefill_seconds = seconds_since(t0);

  t0 = std::chrono::steady_clock::now();
  res.finish_reason = "length";
  for (int step = 0; step < max_new; ++step) {
    if (step > 0) {
      int32_t last = history.back();
      model_.forward(std::span<const int32_t>(&last, 1), cache_, logits.data());
      cached_.push_back(last);
      require_finite(logits, int64_t(history.size()) - 1);
    }
    TokenLogprob lp{};
    std::vector<float> raw;
    if (cfg.logprobs) raw = logits;  // logprobs describe the model's distribution, before penalties
    const int32_t id = sampler.sample(logits, history);
    if (std::find(cfg.stop_ids.begin(), cfg.stop_ids.end(), id) != cfg.stop_ids.end()) {
      res.finish_reason = "stop";
      break;
    }
    if (cfg.logprobs) {
      lp.id = id;
      lp.logprob = token_logprob(raw, id, cfg.top_logprobs, &lp.top);
      res.logprobs.push_back(std::move(lp));
    }
    history.push_back(id);
    res.ids.push_back(id);
    if (on_token && !on_token(id)) break;
  }
  res.decode_seconds = seconds_since(t0);
  return res;
}

}  // namespace moe::infer
