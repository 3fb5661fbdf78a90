// Thread-level parallelism for CPU kernels: OpenMP underneath, one place to ask how many
// threads run (OMP_NUM_THREADS, or the cores the process may use).
#pragma once
#include <omp.h>

#include <cstdint>

namespace moe {
int num_threads();
// Runs fn(begin, end) over [0, n) split into contiguous chunks, one per thread.
template <class F>
void parallel_for(int64_t n, F&& fn) {
  int nt = num_threads();
  if (nt <= 1 || n <= 1) {
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
}  // namespace moe
