// Shared by the benchmarks: a stopwatch, OpenBLAS sgemm's rate on every core (the compute
// ceiling the benchmarks report against) and fast random weights for a ModelConfig.
#pragma once
#include <cblas.h>

#include <chrono>
#include <cstdio>
#include <vector>

#include "core/parallel.h"
#include "core/rng.h"
#include "model/state_dict.h"
#include "model/weight_map.h"

namespace moe::bench {

using Clock = std::chrono::steady_clock;
inline double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

inline double sgemm_rate(int n, int reps = 4) {
  openblas_set_num_threads(num_threads());  // the ceiling: OpenBLAS on every core
  std::vector<float> a(size_t(n) * n, 0.5f), b(size_t(n) * n, 0.25f), c(size_t(n) * n);
  double best = 0;
  for (int rep = 0; rep < reps; ++rep) {
    auto t0 = Clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    best = std::max(best, 2.0 * n * n * double(n) / since(t0));
  }
  openblas_set_num_threads(1);  // as the library runs it (inside its own OpenMP threads)
  if (c[0] != 0.5f * 0.25f * float(n)) std::printf("sgemm check failed\n");
  return best;
}

// Random weights without the cost of Box-Muller for 300 M values: uniform, scaled.
inline model::StateDict random_state(const model::ModelConfig& c, DType dt) {
  model::StateDict s;
  uint64_t seed = 1;
  const model::WeightMap map = model::WeightMap::for_config(c);
  for (const auto& rule : map.rules()) {
    Tensor t(rule.shape, DType::F32);
    float* p = t.f32();
    const bool norm = rule.shape.size() == 1;
    const float scale = norm ? 0.0f : 0.05f;
    const uint64_t base = ++seed * 0x9e3779b97f4a7c15ull;
    parallel_for(t.numel(), [&](int64_t b, int64_t e) {
      Rng rng(base + uint64_t(b));
      for (int64_t i = b; i < e; ++i) p[i] = (norm ? 1.0f : 0.0f) + scale * float(rng.uniform() * 2 - 1);
    });
    s[rule.mcore] = dt == DType::F32 ? t : t.to(dt);
  }
  return s;
}

}  // namespace moe::bench
