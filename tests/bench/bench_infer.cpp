// Inference speed on the CPU against ceilings measured in the same run:
//  - decode: achieved weight bytes/s (non-expert weights + the top-k experts of every MoE
//    layer + the LM head, as stored, x tokens/s) / the machine's read bandwidth (a large
//    sequential read with vector loads on every thread);
//  - prefill: achieved FLOP/s / OpenBLAS sgemm FLOP/s on a square problem.
// A random MoE model with >= 300 M parameters (far larger than the caches), f32 and bf16.
// `--quick` uses a small model (a smoke run for ctest).
#include <immintrin.h>
#include <omp.h>

#include <cblas.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "bench_util.h"
#include "core/cpu_features.h"
#include "core/parallel.h"
#include "core/rng.h"
#include "infer/generator.h"
#include "model/transformer.h"
#include "model/weight_map.h"

using namespace moe;
using namespace moe::bench;

namespace {

__attribute__((target("avx2"))) double sum_avx2(const float* p, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
  }
  float out[8];
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  double s = 0;
  for (float v : out) s += v;
  return s;
}

double sum_scalar(const float* p, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += p[i];
  return s;
}

// Best of several passes of a parallel sequential read over `bytes` of memory.
double read_bandwidth(size_t bytes) {
  const size_t n = bytes / 4;
  Tensor buf({int64_t(n)}, DType::F32);
  float* p = buf.f32();
  parallel_for(int64_t(n), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) p[i] = float(i & 7);
  });
  auto sum = cpu_has_avx2_fma_f16c() ? sum_avx2 : sum_scalar;
  double best = 0, sink = 0;
  for (int rep = 0; rep < 10; ++rep) {
    auto t0 = Clock::now();
    double total = 0;
#pragma omp parallel reduction(+ : total) num_threads(num_threads())
    {
      int t = omp_get_thread_num(), nt = omp_get_num_threads();
      size_t chunk = (n / size_t(nt)) & ~size_t(31);
      total += sum(p + size_t(t) * chunk, chunk);
    }
    sink += total;
    const int64_t read = int64_t(n / 32) * 32;  // floats read: whole 32-float blocks
    best = std::max(best, double(read) * 4 / since(t0));
  }
  if (sink == 42) std::printf(" ");
  return best;
}

model::ModelConfig bench_config(bool quick) {
  model::ModelConfig c;
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
  return c;
}

// Bytes decode reads per token: everything but the unselected experts and the embedding table
// (one row), with the LM head in full.
double decode_bytes_per_token(const model::ModelConfig& c, DType dt) {
  const double es = double(dtype_size(dt));
  double n = double(c.num_active_parameters()) - double(c.vocab_size) * c.hidden_size;  // embedding: one row
  return n * es;
}

void run(DType dt, bool quick, double bw, double gemm) {
  model::ModelConfig c = bench_config(quick);
  auto t0 = Clock::now();
  model::Transformer m(c, random_state(c, dt));
  std::printf("\n== %s model: %.0f M parameters (%.0f M active/token), %s weights, built in %.1f s\n",
              c.model_type.c_str(), double(c.num_parameters()) / 1e6, double(c.num_active_parameters()) / 1e6,
              std::string(dtype_name(dt)).c_str(), since(t0));
  // As llama-bench: prefill of a 512-token prompt (pp512) and decode from a short context (tg).
  const int prompt_len = quick ? 32 : 512, new_tokens = quick ? 8 : 64;
  Rng rng(3);
  auto random_ids = [&](int n) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (auto& id : ids) id = int32_t(rng.next() % uint64_t(c.vocab_size));
    return ids;
  };
  const std::vector<int32_t> long_prompt = random_ids(prompt_len), short_prompt = random_ids(8);
  infer::Generator gen(m);
  infer::GenerationConfig one, many;
  one.max_new_tokens = 1;
  many.max_new_tokens = new_tokens;
  gen.generate(short_prompt, many);  // warm-up (page in weights, allocate caches)
  double best_pre = 0, best_dec = 0;
  for (int rep = 0; rep < (quick ? 1 : 3); ++rep) {
    gen.reset();
    auto r = gen.generate(long_prompt, one);
    best_pre = std::max(best_pre, double(r.prefilled_tokens) / r.prefill_seconds);
    gen.reset();
    r = gen.generate(short_prompt, many);
    // The first new token comes from the prefill's logits; decode ran one forward per later token.
    best_dec = std::max(best_dec, double(r.ids.size() - 1) / r.decode_seconds);
  }
  // FLOPs per prefill token: 2 per active weight except the embedding and the LM head (computed
  // for one token only).
  // Plus causal attention: Q·Kᵀ and P·V over the keys each query sees, (T+1)/2 on average.
  const double attn_tok = 2.0 * 2.0 * (prompt_len + 1) / 2.0 * c.kv_channels * c.num_attention_heads * c.num_layers;
  const double flops_tok =
      2.0 * (double(c.num_active_parameters()) - 2.0 * double(c.vocab_size) * c.hidden_size) + attn_tok;
  const double bytes_tok = decode_bytes_per_token(c, dt);
  std::printf("prefill (%d tokens): %7.1f tokens/s = %6.1f GFLOP/s = %5.1f%% of sgemm (%0.1f GFLOP/s)\n", prompt_len,
              best_pre, best_pre * flops_tok / 1e9, 100 * best_pre * flops_tok / gemm, gemm / 1e9);
  std::printf(
      "decode (%d tokens):   %7.2f tokens/s x %.1f MB/token = %5.2f GB/s = %5.1f%% of read bandwidth (%.2f GB/s)\n",
      new_tokens, best_dec, bytes_tok / 1e6, best_dec * bytes_tok / 1e9, 100 * best_dec * bytes_tok / bw, bw / 1e9);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  std::printf("threads: %d, AVX2/FMA/F16C: %s\n", num_threads(), cpu_has_avx2_fma_f16c() ? "yes" : "no");
  // Best of two measurements (before and after the sgemm), so a noisy moment does not lower the bar.
  const size_t bw_bytes = quick ? (size_t(256) << 20) : (size_t(1) << 30);
  double bw = read_bandwidth(bw_bytes);
  const double gemm = sgemm_rate(quick ? 512 : 2048);
  bw = std::max(bw, read_bandwidth(bw_bytes));
  std::printf("ceilings: read bandwidth %.2f GB/s, sgemm %.1f GFLOP/s\n", bw / 1e9, gemm / 1e9);
  run(DType::F32, quick, bw, gemm);
  run(DType::BF16, quick, bw, gemm);
  return 0;
}
