#include "core/dtype.h"

namespace moe {

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
  }
  return "?";
}

bool parse_dtype(std::string_view n, DType* out) {
  if (n == "F32") *out = DType::F32;
  else if (n == "BF16") *out = DType::BF16;
  else if (n == "F16") *out = DType::F16;
  else return false;
  return true;
}

bool parse_torch_dtype(std::string_view n, DType* out) {
  if (n == "float32" || n == "fp32" || n == "float") *out = DType::F32;
  else if (n == "bfloat16" || n == "bf16") *out = DType::BF16;
  else if (n == "float16" || n == "fp16" || n == "half") *out = DType::F16;
  else return false;
  return true;
}

std::string_view torch_dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
  }
  return "?";
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while ((man & 0x400u) == 0);
      u = sign | uint32_t(127 - 15 - e) << 23 | (man & 0x3ffu) << 13;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | man << 13;
  } else {
    u = sign | (exp + 127 - 15) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((absu >> 13) & 0x3ffu));  // NaN
  if (absu >= 0x477ff000u) return uint16_t(sign | 0x7c00u);                           // overflow -> inf
  if (absu < 0x38800000u) {                                                           // result is subnormal or zero
    if (absu < 0x33000000u) return uint16_t(sign);  // below half of the smallest subnormal
    uint32_t exp = absu >> 23;
    uint32_t man = (absu & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - exp;  // 14 + (113 - exp)
    uint32_t half = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return uint16_t(sign | half);
  }
  uint32_t r = absu + 0xfffu + ((absu >> 13) & 1u) - (uint32_t(112) << 23);
  return uint16_t(sign | (r >> 13));
}

void convert_to_f32(const void* src, DType t, float* dst, size_t n) {
  switch (t) {
    case DType::F32: std::memcpy(dst, src, n * 4); return;
    case DType::BF16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::F16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
  }
}

void convert_from_f32(const float* src, void* dst, DType t, size_t n) {
  switch (t) {
    case DType::F32: std::memcpy(dst, src, n * 4); return;
    case DType::BF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::F16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
  }
}

size_t count_non_finite(const void* data, DType type, size_t n) {
  size_t bad = 0;
  if (type == DType::F32) {
    const auto* u = static_cast<const uint32_t*>(data);
    for (size_t i = 0; i < n; ++i) bad += (u[i] & 0x7F800000u) == 0x7F800000u;
  } else {
    const uint16_t exp = type == DType::BF16 ? 0x7F80 : 0x7C00;
    const auto* u = static_cast<const uint16_t*>(data);
    for (size_t i = 0; i < n; ++i) bad += (u[i] & exp) == exp;
  }
  return bad;
}

}  // namespace moe
