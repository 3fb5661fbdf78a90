#include "dist/link_probe.h"

#include <algorithm>
#include <chrono>
#include <vector>

namespace moe::dist {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// About a millisecond of arithmetic over a buffer that stays in cache (a stretch of a
// layer's compute); the result is kept so the loop is not optimised away.
float busy(std::vector<float>& v) {
  float s = 0;
  for (int pass = 0; pass < 64; ++pass)
    for (float& x : v) x = x * 0.999f + 0.001f, s += x;
  return s;
}

double max_over(Communicator& world, double v) {
  world.all_reduce(&v, 1, DataType::kF64, ReduceOp::kMax);
  return v;
}

}  // namespace

LinkCost probe_links(Communicator& world) {
  const double n = world.size();
  LinkCost c;
  // Payload rate: 16 MB all-reduced a few times (the first one maps MPI's buffers).
  {
    std::vector<float> big(size_t(4) << 20, 1.0f);
    world.all_reduce(big.data(), int64_t(big.size()), DataType::kF32, ReduceOp::kSum);
    constexpr int kBig = 4;
    world.barrier();
    const auto t = Clock::now();
    for (int i = 0; i < kBig; ++i) world.all_reduce(big.data(), int64_t(big.size()), DataType::kF32, ReduceOp::kSum);
    c.bytes_per_s = 2 * (n - 1) / n * double(big.size()) * sizeof(float) / (max_over(world, since(t)) / kBig);
  }
  // Rendezvous: rounds of compute then an all-reduce of 256 KB (a micro-batch's activation rows
  // are of that order, past MPI's eager limit, so each needs its peer's hand more than once). The
  // mean time in the collective, on the rank that waits most, is the fixed cost: on a loaded
  // machine mostly the time a descheduled peer takes to come back, rare but long, which an idle
  // ping-pong would not show (and a median would not count).
  constexpr int kRounds = 800;  // the long waits are rare: enough rounds to count them
  std::vector<float> work(16384, 1.0f), msg(65536, 1.0f);
  double waiting = 0;
  float sink = 0;
  world.barrier();
  for (int i = 0; i < kRounds; ++i) {
    sink += busy(work);
    const auto t = Clock::now();
    world.all_reduce(msg.data(), int64_t(msg.size()), DataType::kF32, ReduceOp::kMax);
    waiting += since(t);
  }
  c.latency_s = max_over(world, waiting + (sink < 0 ? 1 : 0)) / kRounds;
  return c;
}

}  // namespace moe::dist
