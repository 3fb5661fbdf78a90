// Compiled with -mavx2 -mfma -mf16c; only called when cpu_has_avx2_fma_f16c().
#include <immintrin.h>

#include <vector>

#include "kernels/cpu/gemv.h"
#include "kernels/cpu/simd_avx2.h"

namespace moe::kernels::cpu {

namespace {

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p, DType t) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if (t == DType::F16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

inline float widen(const void* W, DType t, int64_t i) {
  auto* h = static_cast<const uint16_t*>(W);
  if (t == DType::F32) return static_cast<const float*>(W)[i];
  return t == DType::BF16 ? bf16_to_f32(h[i]) : f16_to_f32(h[i]);
}

// One weight row against every x row; the row is read from memory once and then served
// from L1 for the remaining tokens.
template <class WT>
inline void row_dot(const GemvArgs& a, int64_t n) {
  const int64_t D = a.D;
  const WT* w = static_cast<const WT*>(a.W) + n * D;
  for (int64_t t = 0; t < a.T; ++t) {
    const float* x = a.x + t * D;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
           acc3 = _mm256_setzero_ps();
    int64_t d = 0;
    for (; d + 32 <= D; d += 32) {
      if constexpr (sizeof(WT) == 4) {
        acc0 = _mm256_fmadd_ps(load8(w + d), load8(x + d), acc0);
        acc1 = _mm256_fmadd_ps(load8(w + d + 8), load8(x + d + 8), acc1);
        acc2 = _mm256_fmadd_ps(load8(w + d + 16), load8(x + d + 16), acc2);
        acc3 = _mm256_fmadd_ps(load8(w + d + 24), load8(x + d + 24), acc3);
      } else {
        acc0 = _mm256_fmadd_ps(load8(w + d, a.wtype), load8(x + d), acc0);
        acc1 = _mm256_fmadd_ps(load8(w + d + 8, a.wtype), load8(x + d + 8), acc1);
        acc2 = _mm256_fmadd_ps(load8(w + d + 16, a.wtype), load8(x + d + 16), acc2);
        acc3 = _mm256_fmadd_ps(load8(w + d + 24, a.wtype), load8(x + d + 24), acc3);
      }
    }
    for (; d + 8 <= D; d += 8) {
      if constexpr (sizeof(WT) == 4) acc0 = _mm256_fmadd_ps(load8(w + d), load8(x + d), acc0);
      else acc0 = _mm256_fmadd_ps(load8(w + d, a.wtype), load8(x + d), acc0);
    }
    float s = hsum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; d < D; ++d) s += widen(a.W, a.wtype, n * D + d) * x[d];
    float* y = a.y + t * a.N + n;
    *y = a.accumulate ? *y + s : s;
  }
}

// bf16 rows: a 32-bit lane holding two bf16 values w[2i], w[2i+1] yields w[2i+1] as f32 by
// masking the low half and w[2i] by shifting left 16 -- no shuffles. x is split once per call
// into even and odd elements per block of 16 to match.
void bf16_rows(const GemvArgs& a, int64_t n0, int64_t n1) {
  const int64_t D = a.D, D16 = D / 16 * 16;
  thread_local std::vector<float> xs;
  xs.resize(size_t(a.T * D16));
  for (int64_t t = 0; t < a.T; ++t)
    for (int64_t b = 0; b < D16; b += 16)
      for (int i = 0; i < 8; ++i) {
        xs[size_t(t * D16 + b + i)] = a.x[t * D + b + 2 * i];          // evens
        xs[size_t(t * D16 + b + 8 + i)] = a.x[t * D + b + 2 * i + 1];  // odds
      }
  const __m256i hi_mask = _mm256_set1_epi32(int(0xffff0000u));
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* w = static_cast<const uint16_t*>(a.W) + n * D;
    for (int64_t t = 0; t < a.T; ++t) {
      const float* x = xs.data() + t * D16;
      __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
             acc3 = _mm256_setzero_ps();
      int64_t d = 0;
      for (; d + 32 <= D16; d += 32) {
        __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + d));
        __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + d + 16));
        acc0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v0, 16)), _mm256_loadu_ps(x + d), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v0, hi_mask)), _mm256_loadu_ps(x + d + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v1, 16)), _mm256_loadu_ps(x + d + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v1, hi_mask)), _mm256_loadu_ps(x + d + 24), acc3);
      }
      for (; d < D16; d += 16) {
        __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + d));
        acc0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v0, 16)), _mm256_loadu_ps(x + d), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v0, hi_mask)), _mm256_loadu_ps(x + d + 8), acc1);
      }
      float s = hsum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
      for (int64_t e = D16; e < D; ++e) s += bf16_to_f32(w[e]) * a.x[t * D + e];
      float* y = a.y + t * a.N + n;
      *y = a.accumulate ? *y + s : s;
    }
  }
}

}  // namespace

void widen_bf16_avx2(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    _mm256_storeu_ps(dst + i,
                     _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(v)), 16)));
    _mm256_storeu_ps(dst + i + 8,
                     _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(v, 1)), 16)));
  }
  for (; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}

void gemv_rows_avx2(const GemvArgs& a, int64_t n0, int64_t n1) {
  if (a.wtype == DType::F32) {
    for (int64_t n = n0; n < n1; ++n) row_dot<float>(a, n);
  } else if (a.wtype == DType::BF16) {
    bf16_rows(a, n0, n1);
  } else {
    for (int64_t n = n0; n < n1; ++n) row_dot<uint16_t>(a, n);
  }
}

}  // namespace moe::kernels::cpu
