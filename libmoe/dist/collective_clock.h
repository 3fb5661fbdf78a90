// Where this process's time in collectives goes, and which collective it is in right now: every
// Communicator call (communicator.h) is timed into a per-kind total (what the training benchmark
// reports as communication time per collective type), and the call in flight is visible to a
// watchdog thread that ends the job when one does not finish within a timeout
// (--distributed_timeout_minutes): a rank that hangs or leaves a collective must not leave the
// others waiting forever.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <string>

namespace moe::dist {

enum class CollectiveKind : uint8_t {
  kAllReduce,
  kReduceScatter,
  kAllGather,
  kAllToAll,
  kBroadcast,
  kSendRecv,
  kBarrier,
  kSplit,
  kReduce  // the reduce-to-owner of overlapped gradient buckets
};
constexpr int kCollectiveKinds = 9;
const char* collective_kind_name(CollectiveKind k);  // "all_reduce", ...

struct CollectiveTimes {
  std::array<double, kCollectiveKinds> seconds{};
  std::array<int64_t, kCollectiveKinds> calls{}, bytes{};
  double total_seconds() const;
};
// The totals since the process started (or the last reset), over every communicator.
CollectiveTimes collective_times();
void reset_collective_times();

// Times one call and marks it in flight; constructed by every Communicator entry point.
class CollectiveScope {
 public:
  CollectiveScope(CollectiveKind kind, const std::string& group, int64_t bytes);
  ~CollectiveScope();
  CollectiveScope(const CollectiveScope&) = delete;
  CollectiveScope& operator=(const CollectiveScope&) = delete;

 private:
  CollectiveKind kind_;
  int64_t bytes_, start_ns_;
};

// Starts (once per process) a thread that calls on_timeout(message) when one collective has been
// in flight longer than timeout_s; the message names the call, the group and the wait.
void start_collective_watchdog(double timeout_s, std::function<void(const std::string&)> on_timeout);

}  // namespace moe::dist
