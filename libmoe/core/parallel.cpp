#include "core/parallel.h"

#include <omp.h>

#include <atomic>

namespace moe {
namespace {
std::atomic<int> g_threads{0};  // 0: not asked yet
}  // namespace

int num_threads() {
  int n = g_threads.load(std::memory_order_relaxed);
  if (n == 0) g_threads.store(n = omp_get_max_threads(), std::memory_order_relaxed);
  return n;
}

void set_num_threads(int n) {
  omp_set_num_threads(n);
  g_threads.store(n, std::memory_order_relaxed);
}
}  // namespace moe
