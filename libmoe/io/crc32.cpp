#include "io/crc32.h"

#include <zlib.h>

#include <algorithm>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace moe::io {

namespace {

uint32_t zlib_crc32(uint32_t crc, const unsigned char* p, size_t n) {
  uLong c = crc;
  for (size_t done = 0; done < n;) {  // in pieces that fit zlib's uInt length
    const uInt chunk = uInt(std::min<size_t>(n - done, size_t(1) << 30));
    c = ::crc32(c, p + done, chunk);
    done += chunk;
  }
  return uint32_t(c);
}

#if defined(__x86_64__)
#define MOE_PCLMUL __attribute__((target("pclmul,sse4.1")))

MOE_PCLMUL inline __m128i load(const unsigned char* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }

// x * k folded onto the next 16 bytes y: hi(x)*k_hi ^ lo(x)*k_lo ^ y
MOE_PCLMUL inline __m128i fold(__m128i x, __m128i k, __m128i y) {
  return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x11), _mm_clmulepi64_si128(x, k, 0x00)), y);
}

// Four 128-bit lanes folded 64 bytes at a time, then into one lane, then Barrett-reduced to 32
// bits (Intel's "Fast CRC Computation Using PCLMULQDQ", in the bit-reflected domain; the
// constants are those of Chromium's zlib crc32_sse42_simd_). `crc` is the raw register
// (pre-inverted); n >= 64 and a multiple of 16.
MOE_PCLMUL uint32_t fold_crc32(const unsigned char* buf, size_t n, uint32_t crc) {
  alignas(16) static const uint64_t k1k2[] = {0x0154442bd4, 0x01c6e41596};
  alignas(16) static const uint64_t k3k4[] = {0x01751997d0, 0x00ccaa009e};
  alignas(16) static const uint64_t k5k0[] = {0x0163cd6124, 0x0000000000};
  alignas(16) static const uint64_t poly[] = {0x01db710641, 0x01f7011641};
  __m128i x1 = _mm_xor_si128(load(buf), _mm_cvtsi32_si128(int(crc)));
  __m128i x2 = load(buf + 16), x3 = load(buf + 32), x4 = load(buf + 48);
  __m128i k = _mm_load_si128(reinterpret_cast<const __m128i*>(k1k2));
  buf += 64, n -= 64;
  for (; n >= 64; buf += 64, n -= 64) {
    x1 = fold(x1, k, load(buf)), x2 = fold(x2, k, load(buf + 16));
    x3 = fold(x3, k, load(buf + 32)), x4 = fold(x4, k, load(buf + 48));
  }
  k = _mm_load_si128(reinterpret_cast<const __m128i*>(k3k4));
  x1 = fold(x1, k, x2), x1 = fold(x1, k, x3), x1 = fold(x1, k, x4);
  for (; n >= 16; buf += 16, n -= 16) x1 = fold(x1, k, load(buf));
  // 128 -> 64 bits
  const __m128i mask = _mm_setr_epi32(~0, 0, ~0, 0);
  x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), _mm_clmulepi64_si128(x1, k, 0x10));
  k = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(k5k0));
  x1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, mask), k, 0x00), _mm_srli_si128(x1, 4));
  // Barrett reduction to 32 bits
  k = _mm_load_si128(reinterpret_cast<const __m128i*>(poly));
  __m128i t = _mm_clmulepi64_si128(_mm_and_si128(x1, mask), k, 0x10);
  t = _mm_clmulepi64_si128(_mm_and_si128(t, mask), k, 0x00);
  return uint32_t(_mm_extract_epi32(_mm_xor_si128(x1, t), 1));
}

const bool kHavePclmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#endif

}  // namespace

uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
#if defined(__x86_64__)
  if (kHavePclmul && n >= 64) {
    const size_t m = n & ~size_t(15);
    crc = ~fold_crc32(p, m, ~crc);
    p += m, n -= m;
  }
#endif
  return zlib_crc32(crc, p, n);
}

}  // namespace moe::io
