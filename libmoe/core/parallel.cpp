#include "core/parallel.h"

#include <omp.h>

namespace moe {
int num_threads() {
  static const int n = omp_get_max_threads();
  return n;
}
}  // namespace moe
