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

namespace {

// The room a prompt leaves in the model's context: RequestError when none, max_new_tokens
// clipped to it (with swift's warning) otherwise.
int room_for(const model::ModelConfig& c, int64_t prompt_tokens, int max_new_tokens) {
  const int64_t ctx = c.max_position_embeddings;
  int max_new = max_new_tokens;
  if (ctx > 0) {
    if (prompt_tokens >= ctx)
      throw RequestError(
          fmt::format("the prompt is {} tokens; the model's context (max_position_embeddings in "
                      "config.json) is {} tokens, answer included: shorten the prompt",
                      prompt_tokens, ctx));
    if (int64_t(max_new) > ctx - prompt_tokens) {
      max_new = int(ctx - prompt_tokens);
      log().warn("max_model_len({}) - num_tokens({}) < max_new_tokens({}): generating at most {} tokens", ctx,
                 prompt_tokens, max_new_tokens, max_new);
    }
  }
  return max_new;
}

// One sequence being generated: what it has produced and how it samples.
struct Row {
  std::vector<int32_t> history;  // prompt + generated ids
  Sampler sampler;
  GenerationResult res;
  int max_new = 0;
  bool done = false;
};

// Takes the next token of `r` from its logits (at position history.size() - 1): sampled, then
// either a stop (done), or appended and reported. Done also after max_new tokens or when
// on_token says stop.
void take(Row& r, std::span<float> logits, const GenerationConfig& cfg, const std::function<bool(int32_t)>& on_token) {
  require_finite(logits, int64_t(r.history.size()) - 1);
  std::vector<float> raw;
  if (cfg.logprobs) raw.assign(logits.begin(), logits.end());  // the model's distribution, before penalties
  const int32_t id = r.sampler.sample(logits, r.history);      // edits the logits in place
  if (std::find(cfg.stop_ids.begin(), cfg.stop_ids.end(), id) != cfg.stop_ids.end()) {
    r.res.finish_reason = "stop";
    r.done = true;
    return;
  }
  if (cfg.logprobs) {
    TokenLogprob lp{};
    lp.id = id;
    lp.logprob = token_logprob(raw, id, cfg.top_logprobs, &lp.top);
    r.res.logprobs.push_back(std::move(lp));
  }
  r.history.push_back(id);
  r.res.ids.push_back(id);
  if ((on_token && !on_token(id)) || int64_t(r.res.ids.size()) >= r.max_new) r.done = true;
}

}  // namespace

GenerationResult Generator::generate(const std::vector<int32_t>& prompt, const GenerationConfig& cfg,
                                     const std::function<bool(int32_t)>& on_token) {
  if (prompt.empty()) throw_input("the prompt is empty: nothing to continue from");
  const int64_t V = model_.config().vocab_size;
  Row r{prompt, Sampler(cfg.sampling), {}, 0, false};
  r.res.prompt_tokens = int64_t(prompt.size());
  // Refuse before the prefill: a prompt past the context is slow (quadratic attention), needs
  // memory for all of it, and rope positions beyond max_position_embeddings were never trained.
  r.max_new = room_for(model_.config(), r.res.prompt_tokens, cfg.max_new_tokens);

  // Reuse the cached prefix; always recompute at least the last prompt token for its logits.
  size_t keep = 0;
  while (keep < cached_.size() && keep < prompt.size() && cached_[keep] == prompt[keep]) ++keep;
  keep = std::min(keep, prompt.size() - 1);
  cache_.truncate(int64_t(keep));
  cached_.resize(keep);

  std::vector<float> logits(static_cast<size_t>(V));
  auto t0 = std::chrono::steady_clock::now();
  std::span<const int32_t> fresh(prompt.data() + keep, prompt.size() - keep);
  model_.forward(fresh, cache_, logits.data());
  cached_.insert(cached_.end(), fresh.begin(), fresh.end());
  r.res.prefilled_tokens = int64_t(fresh.size());
  r.res.prefill_seconds = seconds_since(t0);

  t0 = std::chrono::steady_clock::now();
  r.res.finish_reason = "length";
  r.done = r.max_new <= 0;
  while (!r.done) {
    take(r, logits, cfg, on_token);
    if (r.done) break;
    const int32_t last = r.history.back();
    model_.forward(std::span<const int32_t>(&last, 1), cache_, logits.data());
    cached_.push_back(last);
  }
  r.res.decode_seconds = seconds_since(t0);
  return std::move(r.res);
}

std::vector<GenerationResult> generate_batch(model::Transformer& model,
                                             const std::vector<std::vector<int32_t>>& prompts,
                                             const GenerationConfig& cfg, std::vector<std::string>* errors) {
  const int64_t V = model.config().vocab_size;
  const size_t n = prompts.size();
  std::vector<Row> rows(n, Row{{}, Sampler(cfg.sampling), {}, 0, false});
  std::vector<KvCache> caches;  // reserved: b.caches holds pointers into it
  caches.reserve(n);
  for (size_t i = 0; i < n; ++i) caches.emplace_back(model.config(), model.backend().memory);
  std::vector<float> logits(n * size_t(V));
  errors->assign(n, "");
  std::vector<size_t> todo;  // rows to prefill: the ones that can be served and want tokens
  for (size_t i = 0; i < n; ++i) {
    Row& r = rows[i];
    r.history = prompts[i];
    r.res.prompt_tokens = int64_t(prompts[i].size());
    r.res.finish_reason = "length";
    try {
      if (prompts[i].empty()) throw RequestError("the prompt is empty: nothing to continue from");
      r.max_new = room_for(model.config(), r.res.prompt_tokens, cfg.max_new_tokens);
    } catch (const RequestError& e) {
      (*errors)[i] = e.what();
      r.done = true;
      continue;
    }
    r.done = r.max_new <= 0;
    if (!r.done) todo.push_back(i);
  }
  // The prompts prefilled together, packed into forwards of at most kPrefillTokens tokens (a
  // longer prompt alone): one pass reads each weight once for all of them, which on a CPU is what
  // short prompts cost. Each row's first token comes from its last prompt token's logits; a row
  // is charged its share of its pass's time by tokens.
  std::vector<int32_t> ids, cu;
  std::vector<model::KvStore*> live_caches;
  for (size_t a = 0; a < todo.size();) {
    ids.clear(), live_caches.clear(), cu.assign(1, 0);
    size_t b = a;
    for (; b < todo.size(); ++b) {
      const auto& p = prompts[todo[b]];
      if (b > a && int64_t(ids.size() + p.size()) > kPrefillTokens) break;
      ids.insert(ids.end(), p.begin(), p.end());
      live_caches.push_back(&caches[todo[b]]);
      cu.push_back(int32_t(ids.size()));
    }
    const auto t0 = std::chrono::steady_clock::now();
    model.forward_batch(ids, cu, live_caches, logits.data());
    const double seconds = seconds_since(t0);
    for (size_t j = a; j < b; ++j) {
      Row& r = rows[todo[j]];
      r.res.prefilled_tokens = r.res.prompt_tokens;
      r.res.prefill_seconds = seconds * double(r.res.prompt_tokens) / double(ids.size());
      take(r, std::span<float>(logits.data() + (j - a) * size_t(V), size_t(V)), cfg, {});
    }
    a = b;
  }
  // Then one batched forward per step over the rows still going: each row's last token at its
  // own position against its own cache.
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<size_t> live;
  while (true) {
    ids.clear(), live_caches.clear(), live.clear(), cu.assign(1, 0);
    for (size_t i = 0; i < n; ++i) {
      if (rows[i].done) continue;
      live.push_back(i);
      ids.push_back(rows[i].history.back());
      live_caches.push_back(&caches[i]);
      cu.push_back(int32_t(ids.size()));
    }
    if (live.empty()) break;
    model.forward_batch(ids, cu, live_caches, logits.data());
    for (size_t j = 0; j < live.size(); ++j)
      take(rows[live[j]], std::span<float>(logits.data() + j * size_t(V), size_t(V)), cfg, {});
  }
  const double decode_s = seconds_since(t0);
  std::vector<GenerationResult> out;
  out.reserve(n);
  for (Row& r : rows) {
    r.res.decode_seconds = decode_s;
    out.push_back(std::move(r.res));
  }
  return out;
}

}  // namespace moe::infer
