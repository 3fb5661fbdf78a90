// Row-wise ops of the transformer (kernels/cpu/elementwise.h, backward.h, vexp.h) and their CUDA
// twins against double references: RMSNorm (also as the q/k norm over heads), SwiGLU, RoPE,
// residual add, SiLU-mul, exp-shift-sum.
#include <cmath>

#include "kernels/cpu/backward.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/vexp.h"
#include "ops/harness.h"
#ifdef MOE_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

using namespace moe;
using namespace moe::ops_test;
namespace k = moe::kernels::cpu;

namespace {

std::string shape(std::initializer_list<int64_t> dims) {
  std::string s = "[";
  for (int64_t d : dims) s += (s.size() > 1 ? "," : "") + std::to_string(d);
  return s + "]";
}

std::vector<double> rmsnorm_ref(const std::vector<double>& x, const std::vector<double>& w, int64_t T, int64_t D,
                                double eps) {
  std::vector<double> y(x.size());
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0;
    for (int64_t i = 0; i < D; ++i) ss += x[size_t(t * D + i)] * x[size_t(t * D + i)];
    const double r = 1 / std::sqrt(ss / double(D) + eps);
    for (int64_t i = 0; i < D; ++i) y[size_t(t * D + i)] = x[size_t(t * D + i)] * r * w[size_t(i)];
  }
  return y;
}

double silu(double g) { return g / (1 + std::exp(-g)); }

std::vector<double> swiglu_ref(const std::vector<double>& gu, int64_t T, int64_t F) {
  std::vector<double> h(static_cast<size_t>(T * F));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t f = 0; f < F; ++f)
      h[size_t(t * F + f)] = silu(gu[size_t(t * 2 * F + f)]) * gu[size_t(t * 2 * F + F + f)];
  return h;
}

struct RopeCase {
  int64_t T, H, d, P;
  std::vector<int32_t> pos;
  std::vector<float> c, s;
};
RopeCase rope_case(int64_t T, int64_t H, int64_t d, Rng& rng) {
  RopeCase r{T, H, d, T + 5, {}, {}, {}};
  for (int64_t t = 0; t < T; ++t) r.pos.push_back(int32_t((t * 7 + 3) % r.P));
  for (int64_t p = 0; p < r.P; ++p)
    for (int64_t i = 0; i < d / 2; ++i) {
      const double a = double(p) * std::pow(10000.0, -2.0 * double(i) / double(d));
      r.c.push_back(float(std::cos(a))), r.s.push_back(float(std::sin(a)));
    }
  (void)rng;
  return r;
}
std::vector<double> rope_ref(const std::vector<double>& x, const RopeCase& r) {
  std::vector<double> y = x;
  const int64_t half = r.d / 2;
  for (int64_t t = 0; t < r.T; ++t)
    for (int64_t h = 0; h < r.H; ++h)
      for (int64_t i = 0; i < half; ++i) {
        const size_t o = size_t((t * r.H + h) * r.d);
        const double c = r.c[size_t(r.pos[size_t(t)] * half + i)], s = r.s[size_t(r.pos[size_t(t)] * half + i)];
        y[o + size_t(i)] = x[o + size_t(i)] * c - x[o + size_t(i + half)] * s;
        y[o + size_t(i + half)] = x[o + size_t(i + half)] * c + x[o + size_t(i)] * s;
      }
  return y;
}

const std::vector<std::pair<int64_t, int64_t>> kRowShapes = {{1, 1}, {3, 17}, {17, 127}, {1, 1000}, {300, 256}};
const std::vector<std::pair<int64_t, int64_t>> kFdShapes = {{1, 1}, {3, 17}, {5, 32}};

}  // namespace

TEST(Elementwise, RmsNorm) {
  OpRow row("rmsnorm", "fwd", Backend::Cpu);
  Rng rng(1);
  for (auto [T, D] : kRowShapes) {
    auto x = randn(size_t(T * D), rng), w = randn(size_t(D), rng);
    Guarded<float> y(size_t(T * D), qnan());
    k::rmsnorm(x.data(), T, D, w.data(), 1e-6f, y.data());
    expect_close("rmsnorm " + shape({T, D}), y, rmsnorm_ref(widen(x), widen(w), T, D, 1e-6), kTolF32);
  }
  // In place (the q/k norm over heads normalises its buffer in place).
  auto x = randn(7 * 3 * 16, rng), w = randn(16, rng);
  Guarded<float> y(x);
  k::rmsnorm(y.data(), 21, 16, w.data(), 1e-5f, y.data());
  expect_close("rmsnorm in place", y, rmsnorm_ref(widen(x), widen(w), 21, 16, 1e-5), kTolF32);
}

TEST(Elementwise, RmsNormBackward) {
  OpRow row("rmsnorm", "bwd (fd)", Backend::Cpu);
  Rng rng(2);
  for (auto [T, D] : kFdShapes) {
    auto x = randn(size_t(T * D), rng), w = randn(size_t(D), rng), dy = randn(size_t(T * D), rng);
    auto dw0 = randn(size_t(D), rng);
    Guarded<float> dx(size_t(T * D), qnan()), dw(dw0);
    k::rmsnorm_backward(x.data(), T, D, w.data(), 1e-6f, dy.data(), dx.data(), dw.data());
    EXPECT_TRUE(dx.intact() && dw.intact());
    std::vector<float> dw_only(static_cast<size_t>(D));
    for (int64_t i = 0; i < D; ++i) dw_only[size_t(i)] = dw[size_t(i)] - dw0[size_t(i)];
    const auto r = widen(dy), wd = widen(w), xd = widen(x);
    expect_fd(
        "rmsnorm dx " + shape({T, D}),
        [&](const std::vector<double>& xv) { return dotv(r, rmsnorm_ref(xv, wd, T, D, 1e-6)); }, xd, dx.vec());
    expect_fd(
        "rmsnorm dw " + shape({T, D}),
        [&](const std::vector<double>& wv) { return dotv(r, rmsnorm_ref(xd, wv, T, D, 1e-6)); }, wd, dw_only);
  }
}

TEST(Elementwise, Swiglu) {
  OpRow row("swiglu", "fwd", Backend::Cpu);
  Rng rng(3);
  for (auto [T, F] : kRowShapes) {
    auto gu = randn(size_t(T * 2 * F), rng, 2.0);
    Guarded<float> h(size_t(T * F), qnan());
    k::swiglu(gu.data(), T, F, h.data());
    expect_close("swiglu " + shape({T, F}), h, swiglu_ref(widen(gu), T, F), kTolF32);
  }
}

TEST(Elementwise, SwigluBackward) {
  OpRow row("swiglu", "bwd (fd)", Backend::Cpu);
  Rng rng(4);
  for (auto [T, F] : kFdShapes) {
    auto gu = randn(size_t(T * 2 * F), rng, 2.0), dh = randn(size_t(T * F), rng);
    Guarded<float> dgu(size_t(T * 2 * F), qnan());
    k::swiglu_backward(gu.data(), dh.data(), T, F, dgu.data());
    EXPECT_TRUE(dgu.intact());
    const auto r = widen(dh);
    expect_fd(
        "swiglu " + shape({T, F}), [&](const std::vector<double>& v) { return dotv(r, swiglu_ref(v, T, F)); },
        widen(gu), dgu.vec());
  }
}

TEST(Elementwise, Rope) {
  OpRow row("rope_apply", "fwd", Backend::Cpu);
  Rng rng(5);
  for (auto [T, H, d] :
       std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 2}, {3, 5, 16}, {17, 3, 34}, {130, 8, 64}}) {
    RopeCase rc = rope_case(T, H, d, rng);
    auto x = randn(size_t(T * H * d), rng);
    Guarded<float> y(x);
    k::rope_apply(y.data(), T, H, d, rc.pos.data(), rc.c.data(), rc.s.data());
    expect_close("rope " + shape({T, H, d}), y, rope_ref(widen(x), rc), kTolF32);
  }
}

TEST(Elementwise, RopeBackward) {
  OpRow row("rope_apply", "bwd (fd)", Backend::Cpu);
  Rng rng(6);
  for (auto [T, H, d] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 2}, {3, 5, 16}, {5, 3, 10}}) {
    RopeCase rc = rope_case(T, H, d, rng);
    auto x = randn(size_t(T * H * d), rng), dy = randn(size_t(T * H * d), rng);
    Guarded<float> g(dy);
    k::rope_apply_backward(g.data(), T, H, d, rc.pos.data(), rc.c.data(), rc.s.data());
    EXPECT_TRUE(g.intact());
    const auto r = widen(dy);
    expect_fd(
        "rope " + shape({T, H, d}), [&](const std::vector<double>& v) { return dotv(r, rope_ref(v, rc)); }, widen(x),
        g.vec());
  }
}

TEST(Elementwise, AddInplace) {
  OpRow row("add_inplace", "fwd", Backend::Cpu);
  Rng rng(7);
  for (int64_t n : {1, 17, 127, 70001}) {
    auto y = randn(size_t(n), rng), x = randn(size_t(n), rng);
    std::vector<double> want(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) want[size_t(i)] = double(y[size_t(i)] + x[size_t(i)]);  // one f32 rounding
    Guarded<float> g(y);
    k::add_inplace(g.data(), x.data(), n);
    expect_close("add_inplace n=" + std::to_string(n), g, want, kExact);
  }
}

TEST(Elementwise, SiluMul) {
  OpRow row("silu_mul", "fwd", Backend::Cpu);
  Rng rng(8);
  for (int64_t n : {1, 7, 9, 127, 4099}) {
    auto x = randn(size_t(n), rng, 4.0), u = randn(size_t(n), rng);
    std::vector<double> want(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) want[size_t(i)] = silu(x[size_t(i)]) * u[size_t(i)];
    Guarded<float> y(size_t(n), qnan());
    k::silu_mul(x.data(), u.data(), y.data(), n);
    expect_close("silu_mul n=" + std::to_string(n), y, want, kTolF32);
  }
}

TEST(Elementwise, ExpShiftSum) {
  OpRow row("exp_shift_sum", "fwd", Backend::Cpu);
  Rng rng(9);
  for (int64_t n : {1, 7, 9, 127, 4099}) {
    auto x = randn(size_t(n), rng, 5.0);
    const float m = *std::max_element(x.begin(), x.end());
    std::vector<double> want(static_cast<size_t>(n));
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += (want[size_t(i)] = std::exp(double(x[size_t(i)]) - m));
    Guarded<float> g(x);
    const double got = k::exp_shift_sum(g.data(), n, m);
    expect_close("exp_shift_sum n=" + std::to_string(n), g, want, kTolF32);
    EXPECT_NEAR(got, sum, 1e-6 * sum) << "n=" << n;
  }
}

// CUDA twins against the same references.
#define CUDA_ROW(op, check)                 \
  OpRow row(op, check, Backend::Cuda);      \
  if (std::string why; !cuda_ready(&why)) { \
    row.skip(why);                          \
    GTEST_SKIP() << why;                    \
  }

TEST(ElementwiseCuda, RmsNorm) {
  CUDA_ROW("rmsnorm", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(11);
  for (auto [T, D] : kRowShapes) {
    auto x = randn(size_t(T * D), rng), w = randn(size_t(D), rng);
    kernels::cuda::DeviceBuffer dx(x.size() * 4), dw(w.size() * 4), dy(x.size() * 4);
    dx.upload(x.data(), x.size() * 4), dw.upload(w.data(), w.size() * 4);
    kernels::cuda::rmsnorm(dx.as<float>(), T, D, dw.as<float>(), 1e-6f, dy.as<float>());
    kernels::cuda::synchronize();
    std::vector<float> y(x.size());
    dy.download(y.data(), y.size() * 4);
    expect_close("cuda rmsnorm " + shape({T, D}), y, rmsnorm_ref(widen(x), widen(w), T, D, 1e-6), kTolF32);
  }
#endif
}

TEST(ElementwiseCuda, Swiglu) {
  CUDA_ROW("swiglu", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(12);
  for (auto [T, F] : kRowShapes) {
    auto gu = randn(size_t(T * 2 * F), rng, 2.0);
    kernels::cuda::DeviceBuffer dg(gu.size() * 4), dh(size_t(T * F) * 4);
    dg.upload(gu.data(), gu.size() * 4);
    kernels::cuda::swiglu(dg.as<float>(), T, F, dh.as<float>());
    kernels::cuda::synchronize();
    std::vector<float> h(static_cast<size_t>(T * F));
    dh.download(h.data(), h.size() * 4);
    expect_close("cuda swiglu " + shape({T, F}), h, swiglu_ref(widen(gu), T, F), kTolF32);
  }
#endif
}

TEST(ElementwiseCuda, Rope) {
  CUDA_ROW("rope_apply", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(13);
  for (auto [T, H, d] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 2}, {3, 5, 16}, {130, 8, 64}}) {
    RopeCase rc = rope_case(T, H, d, rng);
    auto x = randn(size_t(T * H * d), rng);
    kernels::cuda::DeviceBuffer dx(x.size() * 4), dp(rc.pos.size() * 4), dc(rc.c.size() * 4), ds(rc.s.size() * 4);
    dx.upload(x.data(), x.size() * 4), dp.upload(rc.pos.data(), rc.pos.size() * 4);
    dc.upload(rc.c.data(), rc.c.size() * 4), ds.upload(rc.s.data(), rc.s.size() * 4);
    kernels::cuda::rope_apply(dx.as<float>(), T, H, d, dp.as<int32_t>(), dc.as<float>(), ds.as<float>());
    kernels::cuda::synchronize();
    std::vector<float> y(x.size());
    dx.download(y.data(), y.size() * 4);
    expect_close("cuda rope " + shape({T, H, d}), y, rope_ref(widen(x), rc), kTolF32);
  }
#endif
}

TEST(ElementwiseCuda, NoTwinYet) {
  for (const char* op : {"rmsnorm", "swiglu", "rope_apply"}) no_cuda_twin(op, "bwd (fd)");
  for (const char* op : {"add_inplace", "silu_mul", "exp_shift_sum"}) no_cuda_twin(op, "fwd");
}
