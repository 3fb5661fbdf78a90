#include "dist/collective_clock.h"

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

namespace moe::dist {

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::mutex g_mu;  // guards g_times (one collective at a time per communicator, but several groups)
CollectiveTimes g_times;

// The call in flight: its start (0: none), kind and group name. Collectives are not nested, so one slot.
std::atomic<int64_t> g_inflight_start{0};
std::atomic<int> g_inflight_kind{0};
std::atomic<const std::string*> g_inflight_group{nullptr};

}  // namespace

const char* collective_kind_name(CollectiveKind k) {
  static const char* names[kCollectiveKinds] = {"all_reduce", "reduce_scatter", "all_gather", "all_to_all", "broadcast",
                                                "send/recv",  "barrier",        "split",      "reduce"};
  return names[int(k)];
}

double CollectiveTimes::total_seconds() const {
  double s = 0;
  for (double v : seconds) s += v;
  return s;
}

CollectiveTimes collective_times() {
  std::lock_guard lock(g_mu);
  return g_times;
}

void reset_collective_times() {
  std::lock_guard lock(g_mu);
  g_times = {};
}

CollectiveScope::CollectiveScope(CollectiveKind kind, const std::string& group, int64_t bytes)
    : kind_(kind), bytes_(bytes), start_ns_(now_ns()) {
  g_inflight_group.store(&group);
  g_inflight_kind.store(int(kind));
  g_inflight_start.store(start_ns_);
}

CollectiveScope::~CollectiveScope() {
  g_inflight_start.store(0);
  const double s = double(now_ns() - start_ns_) * 1e-9;
  std::lock_guard lock(g_mu);
  g_times.seconds[size_t(kind_)] += s;
  g_times.calls[size_t(kind_)] += 1;
  g_times.bytes[size_t(kind_)] += bytes_;
}

void start_collective_watchdog(double timeout_s, std::function<void(const std::string&)> on_timeout) {
  static std::once_flag once;
  std::call_once(once, [&] {
    std::thread([timeout_s, on_timeout = std::move(on_timeout)] {
      const auto poll = std::chrono::milliseconds(timeout_s < 10 ? 100 : 1000);
      for (;;) {
        std::this_thread::sleep_for(poll);
        const int64_t start = g_inflight_start.load();
        if (start == 0 || double(now_ns() - start) * 1e-9 < timeout_s) continue;
        const std::string* group = g_inflight_group.load();
        on_timeout(
            fmt::format("{} on group '{}' did not complete in {:.0f} s (--distributed_timeout_minutes): "
                        "another rank died, hung or skipped it",
                        collective_kind_name(CollectiveKind(g_inflight_kind.load())), group ? *group : std::string("?"),
                        timeout_s));
        return;
      }
    }).detach();
  });
}

}  // namespace moe::dist
