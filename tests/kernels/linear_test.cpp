// linear() on every path (GEMV scalar, GEMV AVX2, sgemm, half-precision weights) against a
// double-precision reference on random inputs, with odd shapes that hit every tail.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/cpu_features.h"
#include "core/rng.h"
#include "kernels/cpu/gemv.h"
#include "kernels/cpu/linear.h"

using namespace moe;
using namespace moe::kernels::cpu;

namespace {

Tensor random_weight(int64_t N, int64_t D, DType dt, Rng& rng) {
  Tensor w({N, D}, DType::F32);
  for (int64_t i = 0; i < N * D; ++i) w.f32()[i] = float(rng.normal());
  return dt == DType::F32 ? w : w.to(dt);
}

// Normalised error ||got - ref|| / ||ref||.
double rel_err(const std::vector<float>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    EXPECT_FALSE(std::isnan(got[i]));
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

std::vector<double> reference(const std::vector<float>& x, int64_t T, const Tensor& w, const std::vector<float>& bias) {
  Tensor wf = w.to(DType::F32);
  const int64_t N = w.dim(0), D = w.dim(1);
  std::vector<double> y(size_t(T * N));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double s = bias.empty() ? 0 : bias[size_t(n)];
      for (int64_t d = 0; d < D; ++d) s += double(x[size_t(t * D + d)]) * wf.f32()[n * D + d];
      y[size_t(t * N + n)] = s;
    }
  return y;
}

}  // namespace

class LinearTest : public ::testing::TestWithParam<std::tuple<DType, int64_t, int64_t, int64_t>> {};

TEST_P(LinearTest, MatchesReference) {
  auto [dt, T, N, D] = GetParam();
  Rng rng(uint64_t(T * 1000 + N * 10 + D));
  Tensor w = random_weight(N, D, dt, rng);
  std::vector<float> x(size_t(T * D)), bias(static_cast<size_t>(N));
  for (auto& v : x) v = float(rng.normal());
  for (auto& v : bias) v = float(rng.normal());
  // Guard values after the output catch stray writes.
  std::vector<float> y(size_t(T * N + 16), 777.0f);
  linear(x.data(), T, w, bias.data(), y.data());
  for (int i = 0; i < 16; ++i) ASSERT_EQ(y[size_t(T * N + i)], 777.0f);
  y.resize(size_t(T * N));
  EXPECT_LT(rel_err(y, reference(x, T, w, bias)), 1e-5);

  // accumulate adds on top
  std::vector<float> y2 = y;
  linear(x.data(), T, w, nullptr, y2.data(), true);
  auto ref = reference(x, T, w, {});
  for (size_t i = 0; i < ref.size(); ++i) ref[i] += y[i];
  EXPECT_LT(rel_err(y2, ref), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearTest,
                         ::testing::Combine(::testing::Values(DType::F32, DType::BF16, DType::F16),
                                            ::testing::Values(1, 3, 8, 9, 33, 300), ::testing::Values(1, 17, 70),
                                            ::testing::Values(1, 31, 64, 200)));

TEST(Gemv, Avx2AgreesWithScalar) {
  if (!cpu_has_avx2_fma_f16c()) GTEST_SKIP() << "CPU lacks AVX2/FMA/F16C";
  Rng rng(3);
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    const int64_t T = 2, N = 37, D = 301;
    Tensor w = random_weight(N, D, dt, rng);
    std::vector<float> x(size_t(T * D)), a(size_t(T * N)), b(size_t(T * N));
    for (auto& v : x) v = float(rng.normal());
    GemvArgs args{x.data(), T, D, w.raw(), dt, a.data(), N, false};
    gemv_rows_scalar(args, 0, N);
    args.y = b.data();
    gemv_rows_avx2(args, 0, N);
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-4 * (1 + std::fabs(a[i])));
  }
}

TEST(Gemm, TiledAvx512AgreesWithScalar) {
  if (!cpu_has_avx512()) GTEST_SKIP() << "CPU lacks AVX-512";
  Rng rng(5);
  for (DType dt : {DType::F32, DType::BF16, DType::F16})
    for (int64_t D : {1, 17, 32, 33, 100, 256, 768})
      for (int64_t T : {9, 13, 24, 200, 400}) {  // every tail of the 6- and 4-token tiles, and several L2 chunks
        const int64_t N = 23;                    // 5 tiles of 4 rows and 3 single rows
        Tensor w = random_weight(N, D, dt, rng);
        std::vector<float> x(size_t(T * D)), a(size_t(T * N)), b(size_t(T * N));
        for (auto& v : x) v = float(rng.normal());
        GemvArgs args{x.data(), T, D, w.raw(), dt, a.data(), N, false};
        gemv_rows_scalar(args, 0, N);
        args.y = b.data();
        gemm_rows_avx512(args, 0, 3);
        gemm_rows_avx512(args, 3, N);
        for (size_t i = 0; i < a.size(); ++i)
          ASSERT_NEAR(a[i], b[i], 1e-4 * (1 + std::fabs(a[i]))) << dtype_name(dt) << " D=" << D << " T=" << T;
        args.accumulate = true;
        gemm_rows_avx512(args, 0, N);
        for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(2 * a[i], b[i], 2e-4 * (1 + std::fabs(a[i])));
      }
}
