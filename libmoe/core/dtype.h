// Element types of tensors and exact conversions between them. bf16 and f16 widen to f32
// exactly; f32 narrows with round-to-nearest-even (NaN stays NaN), as PyTorch does.
#pragma once
#include <cstdint>
#include <cstring>
#include <string_view>

namespace moe {

enum class DType : uint8_t { F32, BF16, F16 };

constexpr size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }
std::string_view dtype_name(DType t);  // "F32", "BF16", "F16" (safetensors spelling)
// Parses a safetensors dtype name; returns false for names moectl does not compute in.
bool parse_dtype(std::string_view name, DType* out);
// Parses torch_dtype / --torch_dtype spellings: float32, bfloat16, float16 (and fp32/bf16/fp16).
bool parse_torch_dtype(std::string_view name, DType* out);
std::string_view torch_dtype_name(DType t);  // "float32", "bfloat16", "float16"

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Bulk conversions (vectorised where the CPU allows).
void convert_to_f32(const void* src, DType src_type, float* dst, size_t n);
// How many of the n values at `data` are NaN or infinite (an all-ones exponent in any dtype).
size_t count_non_finite(const void* data, DType type, size_t n);
void convert_from_f32(const float* src, void* dst, DType dst_type, size_t n);

}  // namespace moe
