// Run-time CPU feature detection: kernels pick their AVX2/FMA/F16C variant only when the
// CPU has it, so one binary runs on any x86-64 (and builds elsewhere with scalar code).
#pragma once

namespace moe {
bool cpu_has_avx2_fma_f16c();
}  // namespace moe
