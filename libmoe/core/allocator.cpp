#include "core/allocator.h"

#include <malloc.h>

namespace moe {

void keep_freed_memory() {
#if defined(__GLIBC__)
  // Serve every size from the heap (no per-allocation mmap: M_MMAP_THRESHOLD cannot be raised
  // past 32 MiB, so mmap is switched off) and never trim it: peak RSS stays what the largest
  // step needed, which the loop needs again next step anyway.
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, -1);
  mallopt(M_TOP_PAD, 64 << 20);
#endif
}

}  // namespace moe
