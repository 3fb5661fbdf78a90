#include "core/cpu_features.h"

#include <cstdlib>
#include <cstring>

#include "core/error.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace moe {

namespace {

CpuIsa detect() {
#if defined(__x86_64__)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return CpuIsa::kScalar;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
  if (!(fma && osxsave && avx && f16c)) return CpuIsa::kScalar;
  unsigned lo, hi;
  __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & 6u) != 6u) return CpuIsa::kScalar;  // the OS saves the YMM registers
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return CpuIsa::kScalar;
  if (!(b & (1u << 5))) return CpuIsa::kScalar;  // AVX2
  const bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  const bool zmm_saved = (lo & 0xe0u) == 0xe0u;  // opmask, upper ZMM0-15, ZMM16-31
  return f && dq && bw && vl && zmm_saved ? CpuIsa::kAvx512 : CpuIsa::kAvx2;
#else
  return CpuIsa::kScalar;
#endif
}

CpuIsa capped(CpuIsa best) {
  const char* v = std::getenv("MOE_CPU_ISA");
  if (!v || !*v || std::strcmp(v, "avx512") == 0) return best;
  if (std::strcmp(v, "avx2") == 0) return best < CpuIsa::kAvx2 ? best : CpuIsa::kAvx2;
  if (std::strcmp(v, "scalar") == 0) return CpuIsa::kScalar;
  throw_input("MOE_CPU_ISA={}: give avx512, avx2 or scalar (the widest kernels to use), or unset it", v);
}

}  // namespace

CpuIsa cpu_isa() {
  static const CpuIsa isa = capped(detect());
  return isa;
}

}  // namespace moe
