// Every CUDA op against its CPU twin on random inputs of several shapes. Skips (with the
// reason) when moectl was built without CUDA or no device is present.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/rng.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/linear.h"
#ifdef MOE_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

using namespace moe;

namespace {
[[maybe_unused]] std::vector<float> randv(size_t n, Rng& rng) {
  std::vector<float> v(n);
  for (auto& x : v) x = float(rng.normal());
  return v;
}
[[maybe_unused]] double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_FALSE(std::isnan(a[i]));
    num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
  }
  return std::sqrt(num / (den + 1e-30));
}
}  // namespace

class CudaOps : public ::testing::Test {
 protected:
  void SetUp() override {
#ifndef MOE_HAVE_CUDA
    GTEST_SKIP() << "built without CUDA (MOE_CUDA=OFF or nvcc not found)";
#else
    std::string why;
    if (!kernels::cuda::device_available(&why)) GTEST_SKIP() << why;
#endif
  }
};

#ifdef MOE_HAVE_CUDA
using kernels::cuda::DeviceBuffer;

TEST_F(CudaOps, RmsNormSwigluRopeLinearMatchCpu) {
  Rng rng(9);
  for (auto [T, D] : {std::pair<int64_t, int64_t>{1, 64}, {7, 1000}, {33, 4096}}) {
    auto x = randv(size_t(T * D), rng), w = randv(size_t(D), rng);
    std::vector<float> want(x.size()), got(x.size());
    kernels::cpu::rmsnorm(x.data(), T, D, w.data(), 1e-6f, want.data());
    DeviceBuffer dx(x.size() * 4), dw(w.size() * 4), dy(x.size() * 4);
    dx.upload(x.data(), x.size() * 4), dw.upload(w.data(), w.size() * 4);
    kernels::cuda::rmsnorm(dx.as<float>(), T, D, dw.as<float>(), 1e-6f, dy.as<float>());
    dy.download(got.data(), got.size() * 4);
    EXPECT_LT(rel_err(got, want), 1e-6) << "rmsnorm T=" << T << " D=" << D;

    const int64_t F = D / 2;
    std::vector<float> h_want(size_t(T * F)), h_got(size_t(T * F));
    kernels::cpu::swiglu(x.data(), T, F, h_want.data());
    DeviceBuffer dh(h_got.size() * 4);
    kernels::cuda::swiglu(dx.as<float>(), T, F, dh.as<float>());
    dh.download(h_got.data(), h_got.size() * 4);
    EXPECT_LT(rel_err(h_got, h_want), 1e-6) << "swiglu";

    const int64_t N = 96;
    auto W = randv(size_t(N * D), rng);
    Tensor Wt = Tensor::borrow({N, D}, DType::F32, W.data(), nullptr);
    std::vector<float> y_want(size_t(T * N)), y_got(size_t(T * N));
    kernels::cpu::linear(x.data(), T, Wt, nullptr, y_want.data());
    DeviceBuffer dW(W.size() * 4), dyl(y_got.size() * 4);
    dW.upload(W.data(), W.size() * 4);
    kernels::cuda::linear_f32(dx.as<float>(), T, dW.as<float>(), N, D, dyl.as<float>());
    dyl.download(y_got.data(), y_got.size() * 4);
    EXPECT_LT(rel_err(y_got, y_want), 1e-5) << "linear";  // TF32 is off by default in cuBLAS sgemm
  }
  // RoPE: T=5 tokens, 3 heads, d=16, positions 0..9 tables
  const int64_t T = 5, H = 3, d = 16, P = 10;
  auto x = randv(size_t(T * H * d), rng), c = randv(size_t(P * d / 2), rng), s = randv(size_t(P * d / 2), rng);
  std::vector<int32_t> pos = {0, 3, 9, 2, 2};
  std::vector<float> want = x, got(x.size());
  kernels::cpu::rope_apply(want.data(), T, H, d, pos.data(), c.data(), s.data());
  DeviceBuffer dx(x.size() * 4), dc(c.size() * 4), ds(s.size() * 4), dp(pos.size() * 4);
  dx.upload(x.data(), x.size() * 4), dc.upload(c.data(), c.size() * 4), ds.upload(s.data(), s.size() * 4);
  dp.upload(pos.data(), pos.size() * 4);
  kernels::cuda::rope_apply(dx.as<float>(), T, H, d, dp.as<int32_t>(), dc.as<float>(), ds.as<float>());
  dx.download(got.data(), got.size() * 4);
  EXPECT_LT(rel_err(got, want), 1e-6) << "rope";
  kernels::cuda::synchronize();
}
#else
TEST_F(CudaOps, RmsNormSwigluRopeLinearMatchCpu) {}
#endif

// Issue 17: running out of device memory is one line naming what was being allocated, the size
// asked and what the device has free; the device stays usable after it, and stream-ordered
// temporaries freed and taken again come back from the pool.
TEST_F(CudaOps, OutOfMemoryNamesTheSizeAndTheFreeMemory) {
#ifdef MOE_HAVE_CUDA
  try {
    kernels::cuda::DeviceBuffer huge(size_t(1) << 50, "the test's 1 PiB tensor");
    FAIL() << "a 1 PiB allocation succeeded";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("the test's 1 PiB tensor"), std::string::npos) << msg;
    EXPECT_NE(msg.find("1073741824.0 MiB asked"), std::string::npos) << msg;
    EXPECT_NE(msg.find("MiB free of"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
  for (int i = 0; i < 3; ++i) {  // usable after the failure
    kernels::cuda::StreamBuffer tmp(size_t(64) << 20, nullptr);
    kernels::cuda::synchronize();
  }
#endif
}
