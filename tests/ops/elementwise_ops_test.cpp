// Row-wise ops of the transformer (kernels/cpu/elementwise.h, backward.h, vexp.h) and their CUDA
// twins against double references: RMSNorm (also as the q/k norm over heads), SwiGLU, RoPE,
// residual add, SiLU-mul, exp-shift-sum.
#include <cmath>

#include "kernels/cpu/backward.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/vexp.h"
#include "kernels/ops.h"
#include "ops/device.h"
#include "ops/harness.h"

using namespace moe;
using namespace moe::ops_test;
namespace k = moe::kernels::cpu;
// Lambdas capture loop bindings by copy ([&, T = T]): clang before 16, whose clang-tidy lints
// this code, cannot capture structured bindings.

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
  OpRow row("rmsnorm", "fwd", On::Cpu);
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
  OpRow row("rmsnorm", "bwd (fd)", On::Cpu);
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
        [&, T = T, D = D](const std::vector<double>& xv) { return dotv(r, rmsnorm_ref(xv, wd, T, D, 1e-6)); }, xd,
        dx.vec());
    expect_fd(
        "rmsnorm dw " + shape({T, D}),
        [&, T = T, D = D](const std::vector<double>& wv) { return dotv(r, rmsnorm_ref(xd, wv, T, D, 1e-6)); }, wd,
        dw_only);
  }
}

TEST(Elementwise, Swiglu) {
  OpRow row("swiglu", "fwd", On::Cpu);
  Rng rng(3);
  for (auto [T, F] : kRowShapes) {
    auto gu = randn(size_t(T * 2 * F), rng, 2.0);
    Guarded<float> h(size_t(T * F), qnan());
    k::swiglu(gu.data(), T, F, h.data());
    expect_close("swiglu " + shape({T, F}), h, swiglu_ref(widen(gu), T, F), kTolF32);
  }
}

TEST(Elementwise, SwigluBackward) {
  OpRow row("swiglu", "bwd (fd)", On::Cpu);
  Rng rng(4);
  for (auto [T, F] : kFdShapes) {
    auto gu = randn(size_t(T * 2 * F), rng, 2.0), dh = randn(size_t(T * F), rng);
    Guarded<float> dgu(size_t(T * 2 * F), qnan());
    k::swiglu_backward(gu.data(), dh.data(), T, F, dgu.data());
    EXPECT_TRUE(dgu.intact());
    const auto r = widen(dh);
    expect_fd(
        "swiglu " + shape({T, F}),
        [&, T = T, F = F](const std::vector<double>& v) { return dotv(r, swiglu_ref(v, T, F)); }, widen(gu), dgu.vec());
  }
}

TEST(Elementwise, Rope) {
  OpRow row("rope_apply", "fwd", On::Cpu);
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
  OpRow row("rope_apply", "bwd (fd)", On::Cpu);
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
  OpRow row("add_inplace", "fwd", On::Cpu);
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
  OpRow row("silu_mul", "fwd", On::Cpu);
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
  OpRow row("exp_shift_sum", "fwd", On::Cpu);
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

// CUDA twins through the ops facade (kernels/ops.h) on a CUDA Backend, against the same
// references and tolerances.
TEST(ElementwiseCuda, RmsNorm) {
  CUDA_ROW("rmsnorm", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(11);
  for (auto [T, D] : kRowShapes) {
    auto x = randn(size_t(T * D), rng), w = randn(size_t(D), rng);
    DeviceIn<float> dx(x), dw(w);
    Guarded<float> y(size_t(T * D), qnan());
    DeviceOut<float> dy(y);
    ops::rmsnorm(gpu(), dx.get(), T, D, dw.get(), 1e-6f, dy.get());
    expect_close("cuda rmsnorm " + shape({T, D}), dy.fetch(), rmsnorm_ref(widen(x), widen(w), T, D, 1e-6), kTolF32);
  }
  auto x = randn(7 * 3 * 16, rng), w = randn(16, rng);
  Guarded<float> y(x);
  DeviceOut<float> dy(y);
  DeviceIn<float> dw(w);
  ops::rmsnorm(gpu(), dy.get(), 21, 16, dw.get(), 1e-5f, dy.get());
  expect_close("cuda rmsnorm in place", dy.fetch(), rmsnorm_ref(widen(x), widen(w), 21, 16, 1e-5), kTolF32);
#endif
}

TEST(ElementwiseCuda, RmsNormBackward) {
  CUDA_ROW("rmsnorm", "bwd (fd)");
#ifdef MOE_HAVE_CUDA
  Rng rng(12);
  for (auto [T, D] : kFdShapes)
    for (bool in_place : {false, true}) {
      auto x = randn(size_t(T * D), rng), w = randn(size_t(D), rng), dy = randn(size_t(T * D), rng);
      auto dw0 = randn(size_t(D), rng);
      DeviceIn<float> X(x), W(w), DY(dy);
      Guarded<float> dx = in_place ? Guarded<float>(dy) : Guarded<float>(size_t(T * D), qnan()), dw(dw0);
      DeviceOut<float> DX(dx), DW(dw);
      ops::rmsnorm_backward(gpu(), X.get(), T, D, W.get(), 1e-6f, in_place ? DX.get() : DY.get(), DX.get(), DW.get());
      DX.fetch(), DW.fetch();
      EXPECT_TRUE(dx.intact() && dw.intact());
      std::vector<float> dw_only(static_cast<size_t>(D));
      for (int64_t i = 0; i < D; ++i) dw_only[size_t(i)] = dw[size_t(i)] - dw0[size_t(i)];
      const auto r = widen(dy), wd = widen(w), xd = widen(x);
      const std::string what = shape({T, D}) + (in_place ? " in place" : "");
      expect_fd(
          "cuda rmsnorm dx " + what,
          [&, T = T, D = D](const std::vector<double>& xv) { return dotv(r, rmsnorm_ref(xv, wd, T, D, 1e-6)); }, xd,
          dx.vec());
      expect_fd(
          "cuda rmsnorm dw " + what,
          [&, T = T, D = D](const std::vector<double>& wv) { return dotv(r, rmsnorm_ref(xd, wv, T, D, 1e-6)); }, wd,
          dw_only);
    }
#endif
}

TEST(ElementwiseCuda, Swiglu) {
  CUDA_ROW("swiglu", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(13);
  for (auto [T, F] : kRowShapes) {
    auto gu = randn(size_t(T * 2 * F), rng, 2.0);
    DeviceIn<float> G(gu);
    Guarded<float> h(size_t(T * F), qnan());
    DeviceOut<float> H(h);
    ops::swiglu(gpu(), G.get(), T, F, H.get());
    expect_close("cuda swiglu " + shape({T, F}), H.fetch(), swiglu_ref(widen(gu), T, F), kTolF32);
  }
#endif
}

TEST(ElementwiseCuda, SwigluBackward) {
  CUDA_ROW("swiglu", "bwd (fd)");
#ifdef MOE_HAVE_CUDA
  Rng rng(14);
  for (auto [T, F] : kFdShapes) {
    auto gu = randn(size_t(T * 2 * F), rng, 2.0), dh = randn(size_t(T * F), rng);
    DeviceIn<float> G(gu), DH(dh);
    Guarded<float> dgu(size_t(T * 2 * F), qnan());
    DeviceOut<float> DG(dgu);
    ops::swiglu_backward(gpu(), G.get(), DH.get(), T, F, DG.get());
    EXPECT_TRUE(DG.fetch().intact());
    const auto r = widen(dh);
    expect_fd(
        "cuda swiglu " + shape({T, F}),
        [&, T = T, F = F](const std::vector<double>& v) { return dotv(r, swiglu_ref(v, T, F)); }, widen(gu), dgu.vec());
  }
#endif
}

#ifdef MOE_HAVE_CUDA
namespace {
struct RopeOnDevice {
  DeviceIn<int32_t> pos;
  DeviceIn<float> c, s;
  explicit RopeOnDevice(const RopeCase& rc) : pos(rc.pos), c(rc.c), s(rc.s) {}
};
}  // namespace
#endif

TEST(ElementwiseCuda, Rope) {
  CUDA_ROW("rope_apply", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(15);
  for (auto [T, H, d] :
       std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 2}, {3, 5, 16}, {17, 3, 34}, {130, 8, 64}}) {
    RopeCase rc = rope_case(T, H, d, rng);
    RopeOnDevice dev(rc);
    auto x = randn(size_t(T * H * d), rng);
    Guarded<float> y(x);
    DeviceOut<float> Y(y);
    ops::rope(gpu(), Y.get(), T, H, d, dev.pos.get(), dev.c.get(), dev.s.get());
    expect_close("cuda rope " + shape({T, H, d}), Y.fetch(), rope_ref(widen(x), rc), kTolF32);
  }
#endif
}

TEST(ElementwiseCuda, RopeBackward) {
  CUDA_ROW("rope_apply", "bwd (fd)");
#ifdef MOE_HAVE_CUDA
  Rng rng(16);
  for (auto [T, H, d] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 2}, {3, 5, 16}, {5, 3, 10}}) {
    RopeCase rc = rope_case(T, H, d, rng);
    RopeOnDevice dev(rc);
    auto x = randn(size_t(T * H * d), rng), dy = randn(size_t(T * H * d), rng);
    Guarded<float> g(dy);
    DeviceOut<float> G(g);
    ops::rope_backward(gpu(), G.get(), T, H, d, dev.pos.get(), dev.c.get(), dev.s.get());
    EXPECT_TRUE(G.fetch().intact());
    const auto r = widen(dy);
    expect_fd(
        "cuda rope " + shape({T, H, d}), [&](const std::vector<double>& v) { return dotv(r, rope_ref(v, rc)); },
        widen(x), g.vec());
  }
#endif
}

TEST(ElementwiseCuda, AddCopyFill) {
  CUDA_ROW("add_inplace", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(17);
  for (int64_t n : {1, 17, 127, 70001}) {
    auto y = randn(size_t(n), rng), x = randn(size_t(n), rng);
    std::vector<double> sum(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) sum[size_t(i)] = double(y[size_t(i)] + x[size_t(i)]);
    DeviceIn<float> X(x);
    Guarded<float> g(y), c(size_t(n), qnan()), f(size_t(n), qnan());
    DeviceOut<float> G(g), C(c), F(f);
    ops::add(gpu(), G.get(), X.get(), n);
    ops::copy(gpu(), C.get(), X.get(), n);
    ops::fill(gpu(), F.get(), 0.25f, n);
    const std::string what = " n=" + std::to_string(n);
    expect_close("cuda add" + what, G.fetch(), sum, kExact);
    expect_close("cuda copy" + what, C.fetch(), widen(x), kExact);
    expect_close("cuda fill" + what, F.fetch(), std::vector<double>(size_t(n), 0.25), kExact);
  }
#endif
}

TEST(ElementwiseCuda, NoTwin) {
  for (const char* op : {"silu_mul", "exp_shift_sum"}) no_cuda_twin(op, "fwd");  // CPU helpers, not ops
}
