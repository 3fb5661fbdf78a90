// Run-time CPU feature detection: kernels pick their AVX-512 or AVX2/FMA/F16C variant only when
// the CPU (and the OS, for the wider registers) has it, so one binary runs on any x86-64 (and
// builds elsewhere with scalar code). MOE_CPU_ISA=avx2|scalar caps the choice, to compare the
// variants on one machine or to rule one out.
#pragma once

namespace moe {

enum class CpuIsa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// The widest kernel family this process uses.
CpuIsa cpu_isa();
inline bool cpu_has_avx2_fma_f16c() { return cpu_isa() >= CpuIsa::kAvx2; }
// AVX-512 F, BW, VL and DQ with the OS saving the ZMM registers (implies the AVX2 set).
inline bool cpu_has_avx512() { return cpu_isa() >= CpuIsa::kAvx512; }

}  // namespace moe
