// Batched decode (`moectl infer --max_batch_size N`, issue 19) against one row at a time on the
// same model in the same run: rows/s of N prompts answered with N greedy tokens each, one row
// after another (Generator::generate) and all together (generate_batch), and the ratios. Decode
// on the CPU is bound by reading the weights, which a batched step reads once for every row.
// Checks that both give the same tokens. This VM's bandwidth drifts by 10-20% within a minute, so
// the two are measured in paired rounds (the order alternating) and every ratio printed is the
// median of the rounds' ratios. `--quick` uses a small model and one round (a smoke run for
// ctest); `--rounds N` sets the rounds (default 5).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench_util.h"
#include "infer/generator.h"
#include "model/transformer.h"

using namespace moe;
using namespace moe::bench;

namespace {

struct Timing {
  double total = 0, decode = 0, prefill = 0;
  std::vector<std::vector<int32_t>> ids;
};

// One row after another, as --max_batch_size 1.
Timing one_at_a_time(model::Transformer& model, const std::vector<std::vector<int32_t>>& prompts,
                     const infer::GenerationConfig& cfg) {
  Timing t;
  const auto t0 = Clock::now();
  for (const auto& p : prompts) {
    infer::Generator gen(model);
    const auto r = gen.generate(p, cfg);
    t.decode += r.decode_seconds, t.prefill += r.prefill_seconds;
    t.ids.push_back(r.ids);
  }
  t.total = since(t0);
  return t;
}

// All together, as --max_batch_size N; each row carries its share of the packed prefill.
Timing together(model::Transformer& model, const std::vector<std::vector<int32_t>>& prompts,
                const infer::GenerationConfig& cfg) {
  Timing t;
  std::vector<std::string> errors;
  const auto t0 = Clock::now();
  const auto batch = infer::generate_batch(model, prompts, cfg, &errors);
  t.total = since(t0), t.decode = batch.front().decode_seconds;
  for (size_t r = 0; r < batch.size(); ++r) {
    t.prefill += batch[r].prefill_seconds;
    t.ids.push_back(errors[r].empty() ? batch[r].ids : std::vector<int32_t>{});
  }
  return t;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int rounds = 5;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true, rounds = 1;
    else if (std::strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) rounds = std::max(1, std::atoi(argv[++i]));
  }
  model::ModelConfig c;  // the inference benchmark's model (bench_infer)
  c.model_type = "qwen3_moe";
  c.num_layers = quick ? 2 : 6;
  c.hidden_size = quick ? 256 : 1024;
  c.num_attention_heads = quick ? 4 : 16;
  c.num_query_groups = quick ? 2 : 4;
  c.kv_channels = 64;
  c.vocab_size = quick ? 4096 : 32000;
  c.max_position_embeddings = 4096;
  c.qk_layernorm = true;
  c.num_experts = 16;
  c.moe_router_topk = 2;
  c.moe_ffn_hidden_size = quick ? 256 : 1024;
  c.moe_layer_pattern.assign(size_t(c.num_layers), true);
  const int rows = 8, new_tokens = quick ? 8 : 32, prompt_len = 64;
  std::printf("model: qwen3_moe %d layers, hidden %d, %d experts top-%d, vocab %lld; %d rows x %d new tokens\n",
              c.num_layers, c.hidden_size, c.num_experts, c.moe_router_topk, (long long)c.vocab_size, rows, new_tokens);
  // What batching saves in bytes: a step of one row reads the shared weights and top-k experts
  // per layer; a step of `rows` rows reads the shared weights and every expert any row picked,
  // E (1 - (1 - k/E)^rows) of them with independent routing. Decode at the same bandwidth would
  // gain this much; more means the batched step also amortises per-step costs (threads waking,
  // norms, router, sampling) that a single row pays alone.
  const double E = c.num_experts, k = c.moe_router_topk, expert = 3.0 * c.hidden_size * c.moe_ffn_hidden_size;
  const double shared = double(c.num_active_parameters()) - c.num_layers * k * expert -
                        (c.untie_embeddings_and_output_weights ? double(c.vocab_size) * c.hidden_size : 0.0);
  const double experts_batched = E * (1 - std::pow(1 - k / E, rows));
  const double gain = rows * (shared + c.num_layers * k * expert) / (shared + c.num_layers * experts_batched * expert);
  std::printf(
      "bytes: a step of %d rows reads %.1f of %d experts per layer where one row reads %.0f: %.2fx the "
      "tokens per byte\n",
      rows, experts_batched, c.num_experts, k, gain);
  for (DType dt : {DType::F32, DType::BF16}) {
    model::Transformer model(c, random_state(c, dt));
    std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(rows));
    for (int r = 0; r < rows; ++r)
      for (int t = 0; t < prompt_len + r; ++t) prompts[size_t(r)].push_back((r * 131 + t * 17) % int(c.vocab_size));
    infer::GenerationConfig cfg;
    cfg.max_new_tokens = new_tokens;
    cfg.sampling.temperature = 0;  // greedy, no stop ids: every row runs new_tokens steps
    const double gen_tokens = double(rows) * new_tokens;
    const char* name = dt == DType::F32 ? "f32 " : "bf16";
    std::vector<double> rows_x, decode_x, prefill_x;
    bool same = true;
    for (int round = 0; round < rounds; ++round) {
      Timing one, all;
      if (round % 2 == 0) one = one_at_a_time(model, prompts, cfg), all = together(model, prompts, cfg);
      else all = together(model, prompts, cfg), one = one_at_a_time(model, prompts, cfg);
      same = same && one.ids == all.ids;
      rows_x.push_back(one.total / all.total), decode_x.push_back(one.decode / all.decode);
      prefill_x.push_back(one.prefill / all.prefill);
      std::printf(
          "%s round %d: one row at a time %.2f rows/s (decode %.1f tokens/s); %d together %.2f rows/s (decode %.1f "
          "tokens/s) = %.2fx rows/s, %.2fx decode, %.2fx prefill\n",
          name, round + 1, rows / one.total, gen_tokens / one.decode, rows, rows / all.total, gen_tokens / all.decode,
          rows_x.back(), decode_x.back(), prefill_x.back());
    }
    std::printf("%s median of %d paired rounds: %.2fx rows/s, %.2fx decode, %.2fx prefill; same tokens: %s\n", name,
                rounds, median(rows_x), median(decode_x), median(prefill_x), same ? "yes" : "NO");
    if (!same) return 1;
  }
  return 0;
}
