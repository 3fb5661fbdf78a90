// Inference speed on the CPU against ceilings measured in the same run:
//  - decode: achieved weight bytes/s (non-expert weights + the top-k experts of every MoE
//    layer + the LM head, as stored, x tokens/s) / the machine's read bandwidth: the best of
//    several read methods (AVX2 and, where present, AVX-512 loads on every thread over >= 1 GiB,
//    with and without software prefetch), probed between every chunk of 16 decoded tokens, each
//    chunk against the probes on either side (this machine's bandwidth drifts within seconds);
//  - prefill: achieved FLOP/s / OpenBLAS sgemm FLOP/s on a square problem (also re-measured
//    around every prefill).
// Three random MoE shapes, f32 and bf16: few large experts (16 x ffn 1024, top-2, 32k vocab),
// fine-grained (32 x ffn 256, top-4, 151,680 vocab) and Qwen3-30B-A3B cut to 4 layers
// (128 x ffn 768, top-8, 151,936 vocab). Every number printed is the median over rounds; each
// round measures its own ceilings. `--quick` uses small models (a smoke run for ctest);
// `--shape NAME` (current, fine, qwen3-30b), `--dtype f32|bf16` and `--rounds N` pick a subset.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
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

// --- read-bandwidth ceiling ------------------------------------------------------------------

// Sum of n floats (n a multiple of 64) with AVX2 loads; PF > 0 prefetches PF floats ahead.
template <int PF>
__attribute__((target("avx2"))) double sum_avx2(const float* p, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (size_t i = 0; i + 64 <= n; i += 64) {
    if constexpr (PF > 0) {
      for (int l = 0; l < 64; l += 16) _mm_prefetch(reinterpret_cast<const char*>(p + i + PF + l), _MM_HINT_T0);
    }
    a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
    a4 = _mm256_add_ps(a4, _mm256_load_ps(p + i + 32));
    a5 = _mm256_add_ps(a5, _mm256_load_ps(p + i + 40));
    a6 = _mm256_add_ps(a6, _mm256_load_ps(p + i + 48));
    a7 = _mm256_add_ps(a7, _mm256_load_ps(p + i + 56));
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                           _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
  float out[8];
  _mm256_storeu_ps(out, s);
  double r = 0;
  for (float v : out) r += v;
  return r;
}

// The same with AVX-512 loads (a whole cache line per load), where the CPU has them.
template <int PF>
__attribute__((target("avx512f"))) double sum_avx512(const float* p, size_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 64 <= n; i += 64) {
    if constexpr (PF > 0) {
      for (int l = 0; l < 64; l += 16) _mm_prefetch(reinterpret_cast<const char*>(p + i + PF + l), _MM_HINT_T0);
    }
    a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
  }
  float out[16];
  _mm512_storeu_ps(out, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  double r = 0;
  for (float v : out) r += v;
  return r;
}

double sum_scalar(const float* p, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += p[i];
  return s;
}

using SumFn = double (*)(const float*, size_t);

struct ReadMethod {
  const char* name;
  SumFn sum;
  bool interleaved;  // threads take 256 KiB blocks in turn instead of one contiguous share each
};

std::vector<ReadMethod> read_methods() {
  if (!cpu_has_avx2_fma_f16c()) return {{"scalar", sum_scalar, false}};
  std::vector<ReadMethod> m = {{"avx2", sum_avx2<0>, false},
                               {"avx2+prefetch 1 KiB", sum_avx2<256>, false},
                               {"avx2+prefetch 4 KiB", sum_avx2<1024>, false},
                               {"avx2 interleaved 256 KiB", sum_avx2<0>, true}};
  if (cpu_has_avx512())
    m.insert(m.end(), {{"avx512", sum_avx512<0>, false},
                       {"avx512+prefetch 1 KiB", sum_avx512<256>, false},
                       {"avx512 interleaved 256 KiB", sum_avx512<0>, true}});
  return m;
}

// A buffer of `bytes` first touched by the threads that read it.
struct ReadBuffer {
  Tensor t;
  size_t n = 0;
  explicit ReadBuffer(size_t bytes) : t({int64_t(bytes / 4)}, DType::F32), n(bytes / 4 / 65536 * 65536) {
    float* p = t.f32();
    parallel_for(int64_t(n), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) p[i] = float(i & 7);
    });
  }
};

double sink = 0;  // keeps the sums alive

// One pass of `m` over the buffer on every thread: bytes/s.
double read_pass(const ReadBuffer& buf, const ReadMethod& m) {
  const float* p = buf.t.f32();
  const size_t n = buf.n;
  auto t0 = Clock::now();
  double total = 0;
#pragma omp parallel reduction(+ : total) num_threads(num_threads())
  {
    const size_t t = size_t(omp_get_thread_num()), nt = size_t(omp_get_num_threads());
    if (m.interleaved) {
      const size_t blk = 65536;  // floats: 256 KiB
      for (size_t b = t * blk; b < n; b += nt * blk) total += m.sum(p + b, blk);
    } else {
      const size_t chunk = n / nt / 64 * 64;
      total += m.sum(p + t * chunk, chunk);
    }
  }
  const double s = since(t0);
  sink += total;
  return double(n) * 4 / s;
}

// The best of every method over `reps` passes of `buf`; per-method bests in `per_method`.
double read_ceiling(const ReadBuffer& buf, int reps, std::vector<double>* per_method = nullptr) {
  const auto methods = read_methods();
  if (per_method) per_method->assign(methods.size(), 0.0);
  double best = 0;
  for (int r = 0; r < reps; ++r)
    for (size_t i = 0; i < methods.size(); ++i) {
      const double bw = read_pass(buf, methods[i]);
      best = std::max(best, bw);
      if (per_method) (*per_method)[i] = std::max((*per_method)[i], bw);
    }
  return best;
}

// --- shapes ----------------------------------------------------------------------------------

struct BenchShape {
  std::string name;
  model::ModelConfig cfg;
  int prompt_len, new_tokens;
};

model::ModelConfig moe_config(int layers, int hidden, int heads, int groups, int head_dim, int vocab, int experts,
                              int topk, int ffn) {
  model::ModelConfig c;
  c.model_type = "qwen3_moe";
  c.num_layers = layers;
  c.hidden_size = hidden;
  c.num_attention_heads = heads;
  c.num_query_groups = groups;
  c.kv_channels = head_dim;
  c.vocab_size = vocab;
  c.max_position_embeddings = 4096;
  c.qk_layernorm = true;
  c.num_experts = experts;
  c.moe_router_topk = topk;
  c.moe_ffn_hidden_size = ffn;
  c.untie_embeddings_and_output_weights = true;
  c.moe_layer_pattern.assign(size_t(c.num_layers), true);
  return c;
}

std::vector<BenchShape> shapes(bool quick) {
  if (quick)
    return {{"current", moe_config(2, 256, 4, 2, 64, 4096, 16, 2, 256), 32, 8},
            {"fine", moe_config(2, 128, 4, 2, 32, 4096, 32, 4, 64), 32, 8},
            {"qwen3-30b", moe_config(2, 256, 4, 2, 64, 4096, 32, 8, 96), 32, 8}};
  return {{"current", moe_config(6, 1024, 16, 4, 64, 32000, 16, 2, 1024), 512, 64},
          {"fine", moe_config(8, 768, 12, 4, 64, 151680, 32, 4, 256), 512, 64},
          {"qwen3-30b", moe_config(4, 2048, 32, 4, 128, 151936, 128, 8, 768), 512, 64}};
}

// Bytes decode reads per token: everything but the unselected experts and the embedding table
// (one row), with the LM head in full.
double decode_bytes_per_token(const model::ModelConfig& c, DType dt) {
  const double es = double(dtype_size(dt));
  const double n = double(c.num_active_parameters()) - double(c.vocab_size) * c.hidden_size;
  return n * es;
}

// FLOPs per prefill token: 2 per active weight except the embedding and the LM head (computed
// for the last token only), plus causal attention: Q·Kᵀ and P·V over the keys each query sees,
// (T+1)/2 on average.
double prefill_flops_per_token(const model::ModelConfig& c, int prompt_len) {
  const double attn = 2.0 * 2.0 * (prompt_len + 1) / 2.0 * c.kv_channels * c.num_attention_heads * c.num_layers;
  return 2.0 * (double(c.num_active_parameters()) - 2.0 * double(c.vocab_size) * c.hidden_size) + attn;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Row {
  std::string shape, dtype;
  double dec_tps, dec_gbs, dec_pct, ceil_gbs, pre_tps, pre_gflops, pre_pct, sgemm_gflops;
  double best_dec_pct, best_pre_pct;  // the best round: the machine at its quietest
  double dec_pct_vs_best_probe;       // decode against the round's best probe instead (median)
};

Row run(const BenchShape& sh, DType dt, bool quick, int rounds, const ReadBuffer& buf) {
  const model::ModelConfig& c = sh.cfg;
  auto t0 = Clock::now();
  model::Transformer m(c, random_state(c, dt));
  std::printf("\n== %s, %s: %.0f M parameters (%.0f M active/token), built in %.1f s\n", sh.name.c_str(),
              std::string(dtype_name(dt)).c_str(), double(c.num_parameters()) / 1e6,
              double(c.num_active_parameters()) / 1e6, since(t0));
  Rng rng(3);
  auto random_ids = [&](int n) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (auto& id : ids) id = int32_t(rng.next() % uint64_t(c.vocab_size));
    return ids;
  };
  const std::vector<int32_t> long_prompt = random_ids(sh.prompt_len), short_prompt = random_ids(8);
  infer::Generator gen(m);
  infer::GenerationConfig one, many;
  one.max_new_tokens = 1;
  many.max_new_tokens = sh.new_tokens;
  gen.generate(short_prompt, many);  // warm-up (page in weights, allocate caches)
  const double bytes_tok = decode_bytes_per_token(c, dt), flops_tok = prefill_flops_per_token(c, sh.prompt_len);
  const int sgemm_n = quick ? 256 : 2048;
  std::vector<double> dec_tps, dec_pct, dec_pct_max, ceil, pre_tps, pre_pct, sg;
  for (int r = 0; r < rounds; ++r) {
    // Decode in chunks of kChunk tokens, each between two ceiling probes (a pass of every read
    // method, the best of them): a chunk's bandwidth against the mean of the probes on either
    // side, so that the ratio follows this machine's drift (its bandwidth moves by 1.5x within a
    // minute). The round's ratio is the median over its chunks; for comparison, its tokens/s
    // against the best probe of the whole round is printed too.
    const int kChunk = quick ? 4 : 16;
    std::vector<double> probes, chunk_s, chunk_pct;
    std::vector<int> chunk_tokens;
    Clock::time_point chunk0;
    int produced = 0, in_chunk = 0;
    auto probe = [&] {
      probes.push_back(read_ceiling(buf, 1));
      chunk0 = Clock::now(), in_chunk = 0;
    };
    auto close_chunk = [&] {
      chunk_s.push_back(since(chunk0)), chunk_tokens.push_back(in_chunk);
      probe();
      const double bw_pair = 0.5 * (probes[probes.size() - 2] + probes.back());
      chunk_pct.push_back(100 * chunk_tokens.back() * bytes_tok / chunk_s.back() / bw_pair);
    };
    gen.reset();
    auto res = gen.generate(short_prompt, many, [&](int32_t) {
      // The first token comes from the prefill's logits; each later one from one decode step.
      if (++produced == 1) probe();
      else if (++in_chunk == kChunk) close_chunk();
      return true;
    });
    if (in_chunk >= kChunk / 2) close_chunk();
    double tokens = 0, secs = 0;
    for (size_t i = 0; i < chunk_s.size(); ++i) tokens += chunk_tokens[i], secs += chunk_s[i];
    const double tps = tokens / secs, bw_max = *std::max_element(probes.begin(), probes.end());
    const double bw = median(probes);
    const double g0 = sgemm_rate(sgemm_n, 2);
    gen.reset();
    res = gen.generate(long_prompt, one);
    const double g1 = sgemm_rate(sgemm_n, 2), g = std::max(g0, g1);
    const double ptps = double(res.prefilled_tokens) / res.prefill_seconds;
    dec_tps.push_back(tps), dec_pct.push_back(median(chunk_pct)), ceil.push_back(bw);
    dec_pct_max.push_back(100 * tps * bytes_tok / bw_max);
    pre_tps.push_back(ptps), pre_pct.push_back(100 * ptps * flops_tok / g), sg.push_back(g);
    std::printf(
        "  round %d: decode %7.2f tok/s = %6.2f GB/s = %5.1f%% of the probes around each of %zu chunks (median; "
        "probes %.1f-%.1f GB/s; %5.1f%% of the best); prefill %7.1f tok/s = %5.1f%% of sgemm %.1f GFLOP/s\n",
        r, tps, tps * bytes_tok / 1e9, dec_pct.back(), chunk_pct.size(),
        *std::min_element(probes.begin(), probes.end()) / 1e9, bw_max / 1e9, dec_pct_max.back(), ptps, pre_pct.back(),
        g / 1e9);
  }
  Row row{sh.name,
          std::string(dtype_name(dt)),
          median(dec_tps),
          median(dec_tps) * bytes_tok / 1e9,
          median(dec_pct),
          median(ceil) / 1e9,
          median(pre_tps),
          median(pre_tps) * flops_tok / 1e9,
          median(pre_pct),
          median(sg) / 1e9,
          *std::max_element(dec_pct.begin(), dec_pct.end()),
          *std::max_element(pre_pct.begin(), pre_pct.end()),
          median(dec_pct_max)};
  std::printf("prefill (%d tokens): %7.1f tokens/s = %6.1f GFLOP/s = %5.1f%% of sgemm (%.1f GFLOP/s)\n", sh.prompt_len,
              row.pre_tps, row.pre_gflops, row.pre_pct, row.sgemm_gflops);
  std::printf(
      "decode (%d tokens):   %7.2f tokens/s x %.1f MB/token = %5.2f GB/s = %5.1f%% of read bandwidth "
      "(%.2f GB/s)\n",
      sh.new_tokens, row.dec_tps, bytes_tok / 1e6, row.dec_gbs, row.dec_pct, row.ceil_gbs);
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int rounds = 3;
  std::string only, only_dtype;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else if (std::strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) rounds = std::max(1, std::atoi(argv[++i]));
    else if (std::strcmp(argv[i], "--shape") == 0 && i + 1 < argc) only = argv[++i];
    else if (std::strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) only_dtype = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--rounds N] [--shape current|fine|qwen3-30b] [--dtype f32|bf16]\n",
                   argv[0]);
      return 2;
    }
  }
  if (quick) rounds = 1;
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress shows when the output is a file
  double load[3] = {0, 0, 0};
  if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) load[0] = -1;
    std::fclose(f);
  }
  // Other work on the cores stalls every parallel region decode runs (dozens per token) far more
  // than the one long read of the ceiling: compare runs at similar load.
  std::printf("threads: %d, AVX2/FMA/F16C: %s, AVX-512: %s, load average %.2f %.2f %.2f\n", num_threads(),
              cpu_has_avx2_fma_f16c() ? "yes" : "no", cpu_has_avx512() ? "yes" : "no", load[0], load[1], load[2]);
  // The ceiling from several fresh buffers, every method; the last buffer stays for the
  // re-measurements around each decode.
  const size_t bw_bytes = quick ? (size_t(256) << 20) : (size_t(1) << 30);
  const auto methods = read_methods();
  std::vector<double> best_method(methods.size(), 0.0);
  std::unique_ptr<ReadBuffer> buf;
  for (int b = 0; b < (quick ? 1 : 3); ++b) {
    buf = std::make_unique<ReadBuffer>(bw_bytes);
    std::vector<double> per;
    read_ceiling(*buf, quick ? 1 : 3, &per);
    for (size_t i = 0; i < per.size(); ++i) best_method[i] = std::max(best_method[i], per[i]);
  }
  double bw = 0;
  std::printf("read bandwidth over %zu MiB, best per method:", bw_bytes >> 20);
  for (size_t i = 0; i < methods.size(); ++i) {
    std::printf(" %s %.2f GB/s;", methods[i].name, best_method[i] / 1e9);
    bw = std::max(bw, best_method[i]);
  }
  const double gemm = sgemm_rate(quick ? 256 : 2048);
  std::printf("\nceilings: read bandwidth %.2f GB/s, sgemm %.1f GFLOP/s\n", bw / 1e9, gemm / 1e9);
  std::vector<Row> rows;
  for (const BenchShape& sh : shapes(quick)) {
    if (!only.empty() && sh.name != only) continue;
    for (DType dt : {DType::F32, DType::BF16})
      if (only_dtype.empty() || only_dtype == (dt == DType::F32 ? "f32" : "bf16"))
        rows.push_back(run(sh, dt, quick, rounds, *buf));
  }
  std::printf("\nmedians of %d rounds (each ratio against the ceiling measured around it):\n", rounds);
  std::printf("%-10s %-5s | %9s %7s %7s %8s %9s | %9s %8s %7s | best round: %% read, %% sgemm\n", "shape", "dtype",
              "dec tok/s", "GB/s", "% read", "ceiling", "% of max", "pre tok/s", "GFLOP/s", "% sgemm");
  for (const Row& r : rows)
    std::printf("%-10s %-5s | %9.2f %7.2f %6.1f%% %8.2f %8.1f%% | %9.1f %8.1f %6.1f%% | %6.1f%% %6.1f%%\n",
                r.shape.c_str(), r.dtype.c_str(), r.dec_tps, r.dec_gbs, r.dec_pct, r.ceil_gbs, r.dec_pct_vs_best_probe,
                r.pre_tps, r.pre_gflops, r.pre_pct, r.best_dec_pct, r.best_pre_pct);
  std::printf(
      "%% read: each decode chunk against the probes on either side (median); %% of max: tokens/s "
      "against the round's best probe\n");
  if (sink == 42) std::printf(" ");
  return 0;
}
