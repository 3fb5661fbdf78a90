#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "core/dtype.h"
#include "core/rng.h"
#include "core/tensor.h"

using namespace moe;

namespace {
float bits_f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t f_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
}  // namespace

TEST(Dtype, Bf16RoundTripIsExactForEveryBf16Value) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = bf16_to_f32(uint16_t(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(f))));
      continue;
    }
    EXPECT_EQ(f32_to_bf16(f), h) << h;
  }
}

TEST(Dtype, F16RoundTripIsExactForEveryF16Value) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f))));
      continue;
    }
    EXPECT_EQ(f32_to_f16(f), h) << h;
  }
}

TEST(Dtype, F16KnownValues) {
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);               // rounds to inf
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie to even -> 0
  EXPECT_EQ(f32_to_f16(std::ldexp(1.5f, -25)), 0x0001);
}

// Narrowing is round-to-nearest-even: compare against a double-precision midpoint rule.
TEST(Dtype, NarrowingRoundsToNearestEven) {
  Rng rng(7);
  for (int i = 0; i < 200000; ++i) {
    uint32_t u = uint32_t(rng.next());
    float f = bits_f(u);
    if (!std::isfinite(f) || std::fabs(f) > 3e38f) continue;
    uint16_t b = f32_to_bf16(f);
    double got = bf16_to_f32(b);
    // the two bf16 neighbours of f
    uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u;
    double a = bits_f(lo), c = bits_f(hi);
    double best = std::fabs(double(f) - a) < std::fabs(double(f) - c) ? a : c;
    if (std::fabs(double(f) - a) == std::fabs(double(f) - c)) best = ((lo >> 16) & 1) ? c : a;
    ASSERT_EQ(got, best) << std::hex << u;
  }
  EXPECT_EQ(f_bits(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::infinity()))), 0x7f800000u);
}

TEST(Tensor, ConversionsAndViews) {
  Tensor t({2, 3}, DType::F32);
  for (int i = 0; i < 6; ++i) t.f32()[i] = float(i) + 0.5f;
  Tensor b = t.to(DType::BF16);
  EXPECT_EQ(b.nbytes(), 12u);
  Tensor back = b.to(DType::F32);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(back.f32()[i], float(i) + 0.5f);
  Tensor row = t.slice_rows(1, 2);
  EXPECT_EQ(row.shape(), (Shape{1, 3}));
  EXPECT_EQ(row.f32()[0], 3.5f);
  EXPECT_EQ(t.view({3, 2}).dim(0), 3);
  EXPECT_THROW(t.view({4, 2}), InternalError);
  EXPECT_THROW(b.f32(), InternalError);
}
