#include "plan/moectl_cpu_schedule.h"

#include <algorithm>
#include <numeric>

namespace moe::plan {

std::vector<int> pipeline_slots(int pp, int vpp, int stage, int micro_batches) {
  if (pp <= 1) return {1};
  const int P = pp, V = vpp, M = micro_batches, r = stage;
  if (V <= 1) return {std::max(1, std::min(P - r, M))};
  // run_interleaved's order: virtual step k's forward runs chunk chunk_of(k, true), its backward
  // chunk_of(k, false); a chunk's slot is taken by a forward and freed by its backward.
  auto chunk_of = [&](int k, bool forward) {
    const int c = (k % (P * V)) / P;
    return forward ? c : V - 1 - c;
  };
  const int total = M * V;
  const int warmup = M == P ? total : std::min(total, (P - r - 1) * 2 + (V - 1) * P);
  std::vector<int> held(size_t(V), 0), most(size_t(V), 0);
  auto forward = [&](int k) {
    const size_t c = size_t(chunk_of(k, true));
    most[c] = std::max(most[c], ++held[c]);
  };
  auto backward = [&](int k) { --held[size_t(chunk_of(k, false))]; };
  for (int k = 0; k < warmup; ++k) forward(k);
  for (int k = 0; k < total - warmup; ++k) forward(warmup + k), backward(k);
  return most;
}

double pipeline_step_s(const std::vector<double>& stage_s, int vpp, int micro_batches) {
  const double most = *std::max_element(stage_s.begin(), stage_s.end());
  const double sum = std::accumulate(stage_s.begin(), stage_s.end(), 0.0);
  const double mv = double(micro_batches) * vpp;
  return ((mv - 1) * most + sum) / vpp;
}

}  // namespace moe::plan
