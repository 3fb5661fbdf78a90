// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c; only called when
// cpu_has_avx512(). y[t, n] (+)= dot(x[t, :], W[n, :]) for 2 to kTiledMaxTokens tokens: a
// prefill's projections and each expert's share of it, batched decode, the training forward.
//
// Why not sgemm: the weights are stored [N, D], the transposed operand of y = x · Wᵀ, and
// OpenBLAS packs them on every call. With the 10-30 tokens an expert gets in a prefill each
// weight is used only that many times, so the packing cost about as much as the multiply (a
// quarter of a fine-grained model's prefill went to sgemm_oncopy). This kernel reads the
// weights where they lie instead: a tile of 4 weight rows x 6 tokens keeps 24 sums of 16 lanes
// in registers along D, so each weight vector loaded feeds 6 FMAs and each x vector 4; the
// 4 rows stay in L1 while the tokens stream from L2. Weights are widened in registers (bf16 by
// a shift, f16 by vcvtph2ps); products and sums are f32, as in the GEMV.
//
// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized (the _mm512_undefined_* pass-through
// operands); nothing in this file is uninitialised.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/gemv.h"

namespace moe::kernels::cpu {

namespace {

constexpr int kR = 4;  // weight rows per tile
constexpr int kC = 6;  // tokens per tile: 4 x 6 sums + 4 weight vectors + x fill 29 of the 32 registers
// Tokens are taken in chunks whose x (about 512 KiB) stays in L2 while a block of rows passes
// over them; a multiple of kC so that only the last chunk has a partial tile.
constexpr int64_t kChunkBytes = int64_t(512) << 10;

// The 16 weights w[d, d + 16) of one row as f32, masked at the tail: bf16 is the high half
// of an f32 (zero-extend, shift left 16), f16 goes through vcvtph2ps.
template <DType WT>
inline __m512 wload(const void* W, int64_t i, __mmask16 m) {
  if constexpr (WT == DType::F32) return _mm512_maskz_loadu_ps(m, static_cast<const float*>(W) + i);
  const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(W) + i);
  if constexpr (WT == DType::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  else return _mm512_cvtph_ps(h);
}

// R rows x C tokens. x rows have stride D; y rows stride N. With `next` (the first weight of
// the next kR rows), those rows are prefetched as this tile reads its own: in a prefill the
// weights come from DRAM once per row group and are then used by only a few tiles, so without
// it every group would start with a stall.
template <DType WT, int R, int C>
void tile_f(const GemvArgs& a, int64_t n, const float* x, int64_t t, const char* next) {
  const int64_t D = a.D;
  constexpr int64_t es = WT == DType::F32 ? 4 : 2;
  __m512 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; d += 16) {
    const __mmask16 m = D - d >= 16 ? __mmask16(0xffff) : __mmask16((1u << (D - d)) - 1);
    if (next) {
#pragma GCC unroll 8
      for (int r = 0; r < kR; ++r) _mm_prefetch(next + (r * D + d) * es, _MM_HINT_T0);
    }
    __m512 w[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) w[r] = wload<WT>(a.W, (n + r) * D + d, m);
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, x + c * D + d);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][c] = _mm512_fmadd_ps(w[r], xv, acc[r][c]);
    }
  }
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    float* y = a.y + (t + c) * a.N + n;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float s = _mm512_reduce_add_ps(acc[r][c]);
      y[r] = a.accumulate ? y[r] + s : s;
    }
  }
}

// Tokens [t, t1) against rows n..n+R: whole tiles of kC tokens, then one tile for the rest;
// the first prefetches the next kR rows when there are that many before n1.
template <DType WT, int R>
void rows_block(const GemvArgs& a, int64_t n, int64_t t, int64_t t1, int64_t n1) {
  constexpr int64_t es = WT == DType::F32 ? 4 : 2;
  const char* next = n + R + kR <= n1 ? static_cast<const char*>(a.W) + (n + R) * a.D * es : nullptr;
  auto run = [&]<int C>() {
    tile_f<WT, R, C>(a, n, a.x + t * a.D, t, next);
    next = nullptr;
  };
  for (; t + kC <= t1; t += kC) run.template operator()<kC>();
  switch (t1 - t) {
    case 5: run.template operator()<5>(); break;
    case 4: run.template operator()<4>(); break;
    case 3: run.template operator()<3>(); break;
    case 2: run.template operator()<2>(); break;
    case 1: run.template operator()<1>(); break;
    default: break;
  }
}

template <DType WT>
void rows(const GemvArgs& a, int64_t n0, int64_t n1) {
  const int64_t chunk = std::max<int64_t>(kC, kChunkBytes / (a.D * int64_t(sizeof(float))) / kC * kC);
  for (int64_t t0 = 0; t0 < a.T; t0 += chunk) {
    const int64_t t1 = std::min(a.T, t0 + chunk);
    int64_t n = n0;
    for (; n + kR <= n1; n += kR) rows_block<WT, kR>(a, n, t0, t1, n1);
    for (; n < n1; ++n) rows_block<WT, 1>(a, n, t0, t1, n1);
  }
}

}  // namespace

void gemm_rows_avx512(const GemvArgs& a, int64_t n0, int64_t n1) {
  if (a.wtype == DType::F32) rows<DType::F32>(a, n0, n1);
  else if (a.wtype == DType::BF16) rows<DType::BF16>(a, n0, n1);
  else rows<DType::F16>(a, n0, n1);
}

}  // namespace moe::kernels::cpu
