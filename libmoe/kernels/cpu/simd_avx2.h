// Small AVX2 helpers shared by the *_avx2.cpp kernels; include only from files compiled with
// -mavx2 (the CMake glob gives them that flag).
#pragma once
#include <immintrin.h>

namespace moe::kernels::cpu {

// The sum of the 8 lanes of v.
inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

}  // namespace moe::kernels::cpu
