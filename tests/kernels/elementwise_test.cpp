#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/rng.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/vexp.h"

using namespace moe;
using namespace moe::kernels::cpu;

TEST(Elementwise, RmsNormMatchesDefinition) {
  Rng rng(1);
  const int T = 3, D = 10;
  std::vector<float> x(T * D), w(D), y(T * D);
  for (auto& v : x) v = float(rng.normal());
  for (auto& v : w) v = float(1 + 0.1 * rng.normal());
  rmsnorm(x.data(), T, D, w.data(), 1e-6f, y.data());
  for (int t = 0; t < T; ++t) {
    double ss = 0;
    for (int i = 0; i < D; ++i) ss += x[t * D + i] * x[t * D + i];
    double r = 1 / std::sqrt(ss / D + 1e-6);
    for (int i = 0; i < D; ++i) EXPECT_NEAR(y[t * D + i], x[t * D + i] * r * w[i], 1e-5);
  }
}

TEST(Elementwise, SwigluUsesGateThenUp) {
  std::vector<float> gu = {1.0f, -2.0f, 3.0f, 4.0f};  // T=1, F=2: gate {1,-2}, up {3,4}
  std::vector<float> h(2);
  swiglu(gu.data(), 1, 2, h.data());
  EXPECT_NEAR(h[0], 1.0 / (1 + std::exp(-1.0)) * 3.0, 1e-6);
  EXPECT_NEAR(h[1], -2.0 / (1 + std::exp(2.0)) * 4.0, 1e-6);
}

TEST(Elementwise, RopeRotatesHalves) {
  // One head, d=4, position 1 with angles a0, a1: (x0, x2) and (x1, x3) rotate.
  std::vector<float> x = {1, 2, 3, 4};
  float a0 = 0.3f, a1 = 0.7f;
  std::vector<float> cos_t = {1, 1, std::cos(a0), std::cos(a1)}, sin_t = {0, 0, std::sin(a0), std::sin(a1)};
  int32_t pos = 1;
  rope_apply(x.data(), 1, 1, 4, &pos, cos_t.data(), sin_t.data());
  EXPECT_NEAR(x[0], 1 * std::cos(a0) - 3 * std::sin(a0), 1e-6);
  EXPECT_NEAR(x[2], 3 * std::cos(a0) + 1 * std::sin(a0), 1e-6);
  EXPECT_NEAR(x[1], 2 * std::cos(a1) - 4 * std::sin(a1), 1e-6);
  EXPECT_NEAR(x[3], 4 * std::cos(a1) + 2 * std::sin(a1), 1e-6);
}

// Causal GQA attention (loop path for few tokens, GEMM path for many, with and without a cached
// prefix) against a naive double-precision reference.
class AttentionTest : public ::testing::TestWithParam<std::pair<int64_t, int64_t>> {};

TEST_P(AttentionTest, CausalGqaMatchesNaive) {
  const auto [T, pos0] = GetParam();
  Rng rng(uint64_t(5 + T + pos0));
  // Head dims: the vector path's whole blocks of 64 and 8, and a scalar tail.
  for (const int64_t d : {8, 20, 64, 100, 128}) {
    const int64_t nh = 4, ng = 2, S = pos0 + T;
    std::vector<float> q(static_cast<size_t>(T * nh * d)), k(static_cast<size_t>(S * ng * d)),
        v(static_cast<size_t>(S * ng * d)), out(static_cast<size_t>(T * nh * d));
    for (auto* vec : {&q, &k, &v})
      for (auto& x : *vec) x = float(rng.normal());
    AttentionShape s{T, pos0, nh, ng, d, 0.35f};
    causal_attention(s, q.data(), k.data(), v.data(), out.data());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < nh; ++h) {
        const int64_t g = h / (nh / ng), n = pos0 + t + 1;
        std::vector<double> p(static_cast<size_t>(n));
        double m = -1e30, sum = 0;
        for (int64_t j = 0; j < n; ++j) {
          double dot = 0;
          for (int64_t c = 0; c < d; ++c) dot += q[size_t((t * nh + h) * d + c)] * k[size_t((j * ng + g) * d + c)];
          p[size_t(j)] = dot * 0.35;
          m = std::max(m, p[size_t(j)]);
        }
        for (auto& x : p) sum += (x = std::exp(x - m));
        for (int64_t c = 0; c < d; ++c) {
          double o = 0;
          for (int64_t j = 0; j < n; ++j) o += p[size_t(j)] / sum * v[size_t((j * ng + g) * d + c)];
          ASSERT_NEAR(out[size_t((t * nh + h) * d + c)], o, 1e-5) << "t=" << t << " h=" << h << " d=" << d;
        }
      }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(std::pair<int64_t, int64_t>{1, 0}, std::pair<int64_t, int64_t>{6, 0},
                                           std::pair<int64_t, int64_t>{1, 9}, std::pair<int64_t, int64_t>{20, 0},
                                           std::pair<int64_t, int64_t>{33, 7}, std::pair<int64_t, int64_t>{300, 5},
                                           std::pair<int64_t, int64_t>{1, 700}, std::pair<int64_t, int64_t>{3, 400}));

// The vectorised exp behind softmax and SiLU against std::exp (AVX2 and scalar paths agree
// with it to float precision), with tails that are not multiples of 8.
TEST(Vexp, MatchesStdExp) {
  Rng rng(13);
  for (int64_t n : {1, 7, 8, 9, 1000, 1003}) {
    std::vector<float> x(static_cast<size_t>(n)), u(static_cast<size_t>(n)), y(static_cast<size_t>(n));
    for (auto& v : x) v = float(rng.uniform() * 170 - 85);
    for (auto& v : u) v = float(rng.normal());
    std::vector<float> e = x;
    const double sum = exp_shift_sum(e.data(), n, 1.5f);
    double want_sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double want = std::exp(double(x[size_t(i)] - 1.5f));  // same float argument
      want_sum += want;
      EXPECT_NEAR(e[size_t(i)], want, 3e-7 * want + 1e-37) << x[size_t(i)];
    }
    EXPECT_NEAR(sum, want_sum, 1e-6 * want_sum);
    for (auto& v : x) v = float(rng.normal() * 8);
    silu_mul(x.data(), u.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const double xi = x[size_t(i)], want = xi / (1 + std::exp(-xi)) * u[size_t(i)];
      EXPECT_NEAR(y[size_t(i)], want, 1e-6 * (std::fabs(want) + 1e-3));
    }
  }
}
