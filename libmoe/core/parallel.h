// Thread-level parallelism for CPU kernels: OpenMP underneath, one place to ask how many
// threads run (OMP_NUM_THREADS, or the cores the process may use).
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace moe {
int num_threads();
// Sets the thread count for every later parallel region (a launcher's share of the cores).
void set_num_threads(int n);
// Runs fn(begin, end) over [0, n) split into contiguous chunks, one per thread. Inside an
// enclosing parallel region it runs serially on the calling thread.
template <class F>
void parallel_for(int64_t n, F&& fn) {
  int nt = num_threads();
  if (nt <= 1 || n <= 1 || omp_in_parallel()) {  // nested calls run on the calling thread
    fn(int64_t(0), n);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num();
    int64_t chunk = (n + nt - 1) / nt;
    int64_t b = t * chunk, e = b + chunk < n ? b + chunk : n;
    if (b < e) fn(b, e);
  }
}
// Runs fn(i) for every item, items spread over threads so that the sum of cost[i] per
// thread is balanced (largest first, each to the least-loaded thread). Items with cost 0 are
// skipped.
template <class F>
void parallel_items(const std::vector<int64_t>& cost, F&& fn) {
  const int nt = num_threads();
  std::vector<int> order;
  for (size_t i = 0; i < cost.size(); ++i)
    if (cost[i] > 0) order.push_back(int(i));
  std::sort(order.begin(), order.end(), [&](int a, int b) { return cost[size_t(a)] > cost[size_t(b)]; });
  if (nt <= 1 || order.size() <= 1 || omp_in_parallel()) {
    for (int i : order) fn(i);
    return;
  }
  std::vector<std::vector<int>> mine(static_cast<size_t>(nt));
  std::vector<int64_t> load(static_cast<size_t>(nt), 0);
  for (int i : order) {
    size_t t = size_t(std::min_element(load.begin(), load.end()) - load.begin());
    mine[t].push_back(i);
    load[t] += cost[size_t(i)];
  }
#pragma omp parallel num_threads(nt)
  {
    for (int i : mine[size_t(omp_get_thread_num())]) fn(i);
  }
}

}  // namespace moe
