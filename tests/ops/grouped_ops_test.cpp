// The grouped local-experts op (ops::grouped_swiglu and its backward): every expert's rows
// through its own SwiGLU MLP, against a double reference, with experts that have no rows, one
// expert, and more experts than threads; the backward by finite differences, with the
// activation kept and recomputed.
#include <algorithm>
#include <cmath>

#include "core/tensor.h"
#include "kernels/ops.h"
#include "ops/device.h"
#include "ops/harness.h"

using moe::DType;
using moe::Rng;
using moe::Tensor;
using namespace moe::ops_test;
namespace ops = moe::ops;

namespace {

std::string dims(int64_t a, int64_t b, int64_t c) {
  return "[" + std::to_string(a) + "," + std::to_string(b) + "," + std::to_string(c) + "]";
}

}  // namespace

namespace {

// Local experts' SwiGLU in double: rows [offsets[e], + blocks[e]) of x through expert e.
std::vector<double> grouped_ref(const std::vector<double>& x, const std::vector<double>& w1,
                                const std::vector<double>& w2, const std::vector<int64_t>& offsets,
                                const std::vector<int64_t>& blocks, int64_t D, int64_t F) {
  std::vector<double> y(x.size(), 0.0);
  for (size_t e = 0; e < offsets.size(); ++e)
    for (int64_t r = offsets[e]; r < offsets[e] + blocks[e]; ++r) {
      const double* xr = x.data() + r * D;
      const double* a = w1.data() + int64_t(e) * 2 * F * D;
      const double* b = w2.data() + int64_t(e) * D * F;
      std::vector<double> h(static_cast<size_t>(F));
      for (int64_t f = 0; f < F; ++f) {
        double g = 0, u = 0;
        for (int64_t i = 0; i < D; ++i) g += a[f * D + i] * xr[i], u += a[(F + f) * D + i] * xr[i];
        h[size_t(f)] = g / (1 + std::exp(-g)) * u;
      }
      for (int64_t i = 0; i < D; ++i)
        for (int64_t f = 0; f < F; ++f) y[size_t(r * D + i)] += b[i * F + f] * h[size_t(f)];
    }
  return y;
}

struct GroupedCase {
  int64_t D, F;
  std::vector<int64_t> blocks;  // rows per expert (0: an expert with no tokens)
};

}  // namespace

TEST(GroupedSwiglu, Forward) {
  OpRow row("grouped_swiglu", "fwd", On::Cpu);
  Rng rng(41);
  for (const GroupedCase& c : std::vector<GroupedCase>{
           {3, 2, {1, 0, 2}}, {17, 5, {3, 9, 0, 1}}, {64, 48, {40, 7}}, {33, 16, std::vector<int64_t>(9, 5)}}) {
    const int64_t E = int64_t(c.blocks.size()), D = c.D, F = c.F;
    std::vector<int64_t> offsets(size_t(E), 0);
    for (int64_t e = 1; e < E; ++e) offsets[size_t(e)] = offsets[size_t(e - 1)] + c.blocks[size_t(e - 1)];
    const int64_t R = offsets.back() + c.blocks.back();
    auto x = randn(size_t(R * D), rng), w1 = randn(size_t(E * 2 * F * D), rng, 0.3),
         w2 = randn(size_t(E * D * F), rng, 0.3);
    std::vector<Tensor> fc1, fc2;
    for (int64_t e = 0; e < E; ++e) {
      fc1.push_back(Tensor::borrow({2 * F, D}, DType::F32, w1.data() + e * 2 * F * D, nullptr));
      fc2.push_back(Tensor::borrow({D, F}, DType::F32, w2.data() + e * D * F, nullptr));
    }
    Guarded<float> gu(size_t(R * 2 * F), qnan()), h(size_t(R * F), qnan()), y(size_t(R * D), qnan());
    ops::grouped_swiglu(moe::Backend{}, x.data(), D, F, offsets, c.blocks, fc1, fc2, gu.data(), h.data(), y.data());
    EXPECT_TRUE(gu.intact() && h.intact() && y.intact());
    expect_close("grouped_swiglu " + dims(R, D, F), y,
                 grouped_ref(widen(x), widen(w1), widen(w2), offsets, c.blocks, D, F), kTolF32Reduce);
  }
}

// Decode (every expert a few rows): the grouped GEMV path, whole experts per thread or all
// experts' rows split over the threads, gives bitwise what linear() + swiglu give per expert.
TEST(GroupedSwiglu, FewRowsPerExpertEqualPerExpertLinearBitwise) {
  OpRow row("grouped_swiglu", "fwd (decode)", On::Cpu);
  Rng rng(43);
  const int64_t D = 256, F = 96, E = 32;
  for (DType dt : {DType::F32, DType::BF16})
    for (const std::vector<int64_t>& busy_rows :
         std::vector<std::vector<int64_t>>{{1}, {2, 1}, {1, 1, 1, 1, 1, 1, 1, 1}, {8, 3, 1, 5}})
      for (bool keep_h : {true, false}) {
        std::vector<int64_t> blocks(size_t(E), 0), offsets(size_t(E), 0);
        for (size_t i = 0; i < busy_rows.size(); ++i) blocks[(i * 7 + 3) % size_t(E)] = busy_rows[i];
        for (int64_t e = 1; e < E; ++e) offsets[size_t(e)] = offsets[size_t(e - 1)] + blocks[size_t(e - 1)];
        const int64_t R = offsets.back() + blocks.back();
        auto x = randn(size_t(R * D), rng);
        std::vector<Tensor> fc1, fc2;
        for (int64_t e = 0; e < E; ++e) {
          auto w1 = randn(size_t(2 * F * D), rng, 0.3), w2 = randn(size_t(D * F), rng, 0.3);
          fc1.push_back(Tensor::borrow({2 * F, D}, DType::F32, w1.data(), nullptr).to(dt));
          fc2.push_back(Tensor::borrow({D, F}, DType::F32, w2.data(), nullptr).to(dt));
        }
        Guarded<float> gu(size_t(R * 2 * F), qnan()), h(size_t(R * F), qnan()), y(size_t(R * D), qnan());
        ops::grouped_swiglu(moe::Backend{}, x.data(), D, F, offsets, blocks, fc1, fc2, gu.data(),
                            keep_h ? h.data() : nullptr, y.data());
        EXPECT_TRUE(gu.intact() && h.intact() && y.intact());
        std::vector<float> gu_ref(size_t(R * 2 * F)), h_ref(size_t(R * F)), y_ref(size_t(R * D));
        for (int64_t e = 0; e < E; ++e) {
          const int64_t off = offsets[size_t(e)], n = blocks[size_t(e)];
          if (n == 0) continue;
          ops::linear(moe::Backend{}, x.data() + off * D, n, fc1[size_t(e)], nullptr, gu_ref.data() + off * 2 * F);
          ops::swiglu(moe::Backend{}, gu_ref.data() + off * 2 * F, n, F, h_ref.data() + off * F);
          ops::linear(moe::Backend{}, h_ref.data() + off * F, n, fc2[size_t(e)], nullptr, y_ref.data() + off * D);
        }
        for (int64_t i = 0; i < R * D; ++i)
          ASSERT_EQ(y.data()[i], y_ref[size_t(i)]) << "row " << i / D << " dtype " << moe::dtype_name(dt);
        for (int64_t i = 0; i < R * 2 * F; ++i) ASSERT_EQ(gu.data()[i], gu_ref[size_t(i)]);
        if (keep_h) {
          for (int64_t i = 0; i < R * F; ++i) ASSERT_EQ(h.data()[i], h_ref[size_t(i)]);
        }
      }
}

TEST(GroupedSwiglu, BackwardFd) {
  OpRow row("grouped_swiglu", "bwd (fd)", On::Cpu);
  Rng rng(42);
  for (bool keep_h : {true, false}) {
    const int64_t D = 5, F = 3;
    const std::vector<int64_t> blocks = {2, 0, 3}, offsets = {0, 2, 2};
    const int64_t E = 3, R = 5;
    auto x = randn(size_t(R * D), rng), w1 = randn(size_t(E * 2 * F * D), rng, 0.5),
         w2 = randn(size_t(E * D * F), rng, 0.5);
    auto dy = randn(size_t(R * D), rng);
    std::vector<float> dw1(w1.size(), 0.0f), dw2(w2.size(), 0.0f);
    std::vector<Tensor> fc1, fc2, d1, d2;
    for (int64_t e = 0; e < E; ++e) {
      fc1.push_back(Tensor::borrow({2 * F, D}, DType::F32, w1.data() + e * 2 * F * D, nullptr));
      fc2.push_back(Tensor::borrow({D, F}, DType::F32, w2.data() + e * D * F, nullptr));
      d1.push_back(Tensor::borrow({2 * F, D}, DType::F32, dw1.data() + e * 2 * F * D, nullptr));
      d2.push_back(Tensor::borrow({D, F}, DType::F32, dw2.data() + e * D * F, nullptr));
    }
    std::vector<float> gu(size_t(R * 2 * F)), h(size_t(R * F)), y(size_t(R * D));
    ops::grouped_swiglu(moe::Backend{}, x.data(), D, F, offsets, blocks, fc1, fc2, gu.data(), h.data(), y.data());
    Guarded<float> dx(size_t(R * D), qnan());
    ops::grouped_swiglu_backward(moe::Backend{}, x.data(), D, F, offsets, blocks, fc1, fc2, gu.data(),
                                 keep_h ? h.data() : nullptr, dy.data(), dx.data(), d1, d2);
    EXPECT_TRUE(dx.intact());
    const auto r = widen(dy), xd = widen(x), ad = widen(w1), bd = widen(w2);
    const std::string what = std::string("grouped_swiglu ") + (keep_h ? "" : "recomputed h ");
    expect_fd(
        what + "dx",
        [&](const std::vector<double>& v) { return dotv(r, grouped_ref(v, ad, bd, offsets, blocks, D, F)); }, xd,
        dx.vec());
    expect_fd(
        what + "dfc1",
        [&](const std::vector<double>& v) { return dotv(r, grouped_ref(xd, v, bd, offsets, blocks, D, F)); }, ad, dw1);
    expect_fd(
        what + "dfc2",
        [&](const std::vector<double>& v) { return dotv(r, grouped_ref(xd, ad, v, offsets, blocks, D, F)); }, bd, dw2);
  }
}

// The CUDA experts through the facade: weights, activations and gradients on the device, the
// rows per expert on the host; the same finite-difference checks as the CPU row.
// bf16 experts on the GPU, forward: experts with a few rows (the GEMV path, f32 sums: the f32
// tolerance) and one with many (x rounded to bf16 for the GEMM: 1e-2 relative L2).
TEST(GroupedSwigluCuda, Bf16ExpertsForward) {
  CUDA_ROW("grouped_swiglu", "fwd bf16");
#ifdef MOE_HAVE_CUDA
  Rng rng(143);
  const int64_t D = 64, F = 24, E = 4;
  for (const std::vector<int64_t>& blocks : std::vector<std::vector<int64_t>>{{1, 0, 3, 8}, {2, 20, 0, 1}}) {
    std::vector<int64_t> offsets(size_t(E), 0);
    for (size_t e = 1; e < size_t(E); ++e) offsets[e] = offsets[e - 1] + blocks[e - 1];
    const int64_t R = offsets.back() + blocks.back();
    auto x = randn(size_t(R * D), rng), w1 = randn(size_t(E * 2 * F * D), rng, 0.3),
         w2 = randn(size_t(E * D * F), rng, 0.3);
    std::vector<uint16_t> b1(w1.size()), b2(w2.size());  // bf16 weights, and the values they hold
    convert_from_f32(w1.data(), b1.data(), DType::BF16, w1.size());
    convert_from_f32(w2.data(), b2.data(), DType::BF16, w2.size());
    convert_to_f32(b1.data(), DType::BF16, w1.data(), w1.size());
    convert_to_f32(b2.data(), DType::BF16, w2.data(), w2.size());
    DeviceIn<float> X(x);
    DeviceIn<uint16_t> W1(b1), W2(b2);
    std::vector<Tensor> fc1, fc2;
    for (int64_t e = 0; e < E; ++e) {
      fc1.push_back(Tensor::borrow({2 * F, D}, DType::BF16, W1.get() + e * 2 * F * D, nullptr));
      fc2.push_back(Tensor::borrow({D, F}, DType::BF16, W2.get() + e * D * F, nullptr));
    }
    Guarded<float> gu(size_t(R * 2 * F), qnan()), y(size_t(R * D), qnan());
    DeviceOut<float> GU(gu), Y(y);
    ops::grouped_swiglu(gpu(), X.get(), D, F, offsets, blocks, fc1, fc2, GU.get(), nullptr, Y.get());
    const bool gemm = *std::max_element(blocks.begin(), blocks.end()) > 8;
    expect_close(std::string("cuda grouped_swiglu bf16 y") + (gemm ? " (GEMM)" : " (GEMV)"), Y.fetch(),
                 grouped_ref(widen(x), widen(w1), widen(w2), offsets, blocks, D, F), gemm ? 1e-4 : kTolF32Reduce);
  }
#endif
}

TEST(GroupedSwigluCuda, ForwardAndBackward) {
  OpRow fwd_row("grouped_swiglu", "fwd", On::Cuda);
  if (std::string why; !cuda_ready(&why)) fwd_row.skip(why);
  CUDA_ROW("grouped_swiglu", "bwd (fd)");
#ifdef MOE_HAVE_CUDA
  Rng rng(142);
  for (bool keep_h : {true, false}) {
    const int64_t D = 5, F = 3;
    const std::vector<int64_t> blocks = {2, 0, 3}, offsets = {0, 2, 2};
    const int64_t E = 3, R = 5;
    auto x = randn(size_t(R * D), rng), w1 = randn(size_t(E * 2 * F * D), rng, 0.5),
         w2 = randn(size_t(E * D * F), rng, 0.5);
    auto dy = randn(size_t(R * D), rng);
    DeviceIn<float> X(x), W1(w1), W2(w2), DY(dy), DW1(std::vector<float>(w1.size(), 0.0f)),
        DW2(std::vector<float>(w2.size(), 0.0f));
    std::vector<Tensor> fc1, fc2, d1, d2;
    for (int64_t e = 0; e < E; ++e) {
      fc1.push_back(Tensor::borrow({2 * F, D}, DType::F32, W1.get() + e * 2 * F * D, nullptr));
      fc2.push_back(Tensor::borrow({D, F}, DType::F32, W2.get() + e * D * F, nullptr));
      d1.push_back(Tensor::borrow({2 * F, D}, DType::F32, DW1.get() + e * 2 * F * D, nullptr));
      d2.push_back(Tensor::borrow({D, F}, DType::F32, DW2.get() + e * D * F, nullptr));
    }
    Guarded<float> gu(size_t(R * 2 * F), qnan()), h(size_t(R * F), qnan()), y(size_t(R * D), qnan());
    DeviceOut<float> GU(gu), H(h), Y(y);
    ops::grouped_swiglu(gpu(), X.get(), D, F, offsets, blocks, fc1, fc2, GU.get(), keep_h ? H.get() : nullptr, Y.get());
    const auto xd = widen(x), ad = widen(w1), bd = widen(w2);
    expect_close("cuda grouped_swiglu y", Y.fetch(), grouped_ref(xd, ad, bd, offsets, blocks, D, F), kTolF32Reduce);
    EXPECT_TRUE(GU.fetch().intact());
    Guarded<float> dx(size_t(R * D), qnan());
    DeviceOut<float> DX(dx);
    ops::grouped_swiglu_backward(gpu(), X.get(), D, F, offsets, blocks, fc1, fc2, GU.get(), keep_h ? H.get() : nullptr,
                                 DY.get(), DX.get(), d1, d2);
    EXPECT_TRUE(DX.fetch().intact());
    const auto r = widen(dy);
    const std::string what = std::string("cuda grouped_swiglu ") + (keep_h ? "" : "recomputed h ");
    expect_fd(
        what + "dx",
        [&](const std::vector<double>& v) { return dotv(r, grouped_ref(v, ad, bd, offsets, blocks, D, F)); }, xd,
        dx.vec());
    expect_fd(
        what + "dfc1",
        [&](const std::vector<double>& v) { return dotv(r, grouped_ref(xd, v, bd, offsets, blocks, D, F)); }, ad,
        DW1.download());
    expect_fd(
        what + "dfc2",
        [&](const std::vector<double>& v) { return dotv(r, grouped_ref(xd, ad, v, offsets, blocks, D, F)); }, bd,
        DW2.download());
  }
#endif
}

namespace {

// Decode's experts by id in double: y0 plus, for each token, its pairs' weighted expert outputs
// (grouped_ref on the token's row alone, through expert ids[p]; ids < 0 skipped).
std::vector<double> by_id_ref(const std::vector<double>& x, const std::vector<double>& w1,
                              const std::vector<double>& w2, const std::vector<int32_t>& ids,
                              const std::vector<float>& weight, const std::vector<float>& y0, int64_t K, int64_t D,
                              int64_t F) {
  std::vector<double> y(y0.begin(), y0.end());
  const int64_t E = int64_t(w1.size()) / (2 * F * D);
  for (size_t p = 0; p < ids.size(); ++p) {
    if (ids[p] < 0) continue;
    const int64_t t = int64_t(p) / K;
    std::vector<int64_t> blocks(size_t(E), 0), offsets(size_t(E), 0);
    blocks[size_t(ids[p])] = 1;
    const std::vector<double> xt(x.begin() + t * D, x.begin() + (t + 1) * D);
    const auto out = grouped_ref(xt, w1, w2, offsets, blocks, D, F);
    for (int64_t d = 0; d < D; ++d) y[size_t(t * D + d)] += double(weight[p]) * out[size_t(d)];
  }
  return y;
}

struct ByIdCase {
  int64_t T, K, D, F, E;
  std::vector<int32_t> ids;  // [T, K]; -1: a dropped pair
};

const std::vector<ByIdCase> kByIdCases = {
    {1, 2, 64, 24, 4, {3, 1}}, {3, 2, 37, 11, 5, {0, 4, 4, -1, 2, 0}}, {2, 4, 128, 40, 8, {7, 0, 3, 5, 1, 1, 6, 2}}};

// The bf16 weights of `w` and the values they hold (written back into w).
std::vector<uint16_t> to_bf16(std::vector<float>& w) {
  std::vector<uint16_t> b(w.size());
  moe::convert_from_f32(w.data(), b.data(), DType::BF16, w.size());
  moe::convert_to_f32(b.data(), DType::BF16, w.data(), w.size());
  return b;
}

// One case's random inputs: x, the experts' weights (and, for bf16, the bf16 words whose values
// w1 and w2 then hold), the output's starting values and the pairs' weights.
struct ByIdInputs {
  std::vector<float> x, w1, w2, y0, weight;
  std::vector<uint16_t> b1, b2;
  ByIdInputs(const ByIdCase& c, DType dt, Rng& rng)
      : x(randn(size_t(c.T * c.D), rng)),
        w1(randn(size_t(c.E * 2 * c.F * c.D), rng, 0.3)),
        w2(randn(size_t(c.E * c.D * c.F), rng, 0.3)),
        y0(randn(size_t(c.T * c.D), rng)),
        weight(randn(size_t(c.T * c.K), rng)) {
    if (dt == DType::BF16) b1 = to_bf16(w1), b2 = to_bf16(w2);
  }
  std::vector<double> want(const ByIdCase& c) const {
    return by_id_ref(widen(x), widen(w1), widen(w2), c.ids, weight, y0, c.K, c.D, c.F);
  }
};

// Every case in f32 and bf16 weights, each with fresh inputs.
template <class Fn>
void for_each_by_id_case(uint64_t seed, Fn&& fn) {
  Rng rng(seed);
  for (DType dt : {DType::F32, DType::BF16})
    for (const ByIdCase& c : kByIdCases) fn(c, dt, ByIdInputs(c, dt, rng));
}

// The experts' weights as tensors side by side from fc1_0 and fc2_0 (how a device holds them).
std::pair<std::vector<Tensor>, std::vector<Tensor>> side_by_side(const ByIdCase& c, DType dt, const void* fc1_0,
                                                                 const void* fc2_0) {
  const size_t es = moe::dtype_size(dt);
  std::pair<std::vector<Tensor>, std::vector<Tensor>> w;
  for (int64_t e = 0; e < c.E; ++e) {
    w.first.push_back(
        Tensor::borrow({2 * c.F, c.D}, dt, static_cast<const char*>(fc1_0) + size_t(e * 2 * c.F * c.D) * es, nullptr));
    w.second.push_back(
        Tensor::borrow({c.D, c.F}, dt, static_cast<const char*>(fc2_0) + size_t(e * c.D * c.F) * es, nullptr));
  }
  return w;
}

}  // namespace

TEST(ExpertsById, ForwardAgainstTheReference) {
  OpRow row("experts_by_id", "fwd", On::Cpu);
  for_each_by_id_case(151, [](const ByIdCase& c, DType dt, const ByIdInputs& in) {
    const int64_t P = c.T * c.K, D = c.D, F = c.F;
    const bool f32 = dt == DType::F32;
    const auto [fc1, fc2] = side_by_side(c, dt, f32 ? static_cast<const void*>(in.w1.data()) : in.b1.data(),
                                         f32 ? static_cast<const void*>(in.w2.data()) : in.b2.data());
    Guarded<float> gu(size_t(P * 2 * F), qnan()), h(size_t(P * F), qnan()), yp(size_t(P * D), qnan()), y(in.y0);
    ops::experts_by_id(moe::Backend{}, in.x.data(), c.T, c.K, D, F, c.ids.data(), in.weight.data(), fc1, fc2, gu.data(),
                       h.data(), yp.data(), y.data());
    EXPECT_TRUE(gu.intact() && h.intact() && yp.intact());
    expect_close("experts_by_id " + dims(c.T, D, F), y, in.want(c), kTolF32Reduce);
  });
}

TEST(ExpertsByIdCuda, ForwardAgainstTheReference) {
  CUDA_ROW("experts_by_id", "fwd");
#ifdef MOE_HAVE_CUDA
  for_each_by_id_case(152, [](const ByIdCase& c, DType dt, const ByIdInputs& in) {
    const int64_t P = c.T * c.K, D = c.D, F = c.F;
    const bool f32 = dt == DType::F32;
    DeviceIn<float> X(in.x), WT(in.weight), W1f(in.w1), W2f(in.w2);
    DeviceIn<uint16_t> W1h(in.b1), W2h(in.b2);
    DeviceIn<int32_t> IDS(c.ids);
    const auto [fc1, fc2] = side_by_side(c, dt, f32 ? static_cast<const void*>(W1f.get()) : W1h.get(),
                                         f32 ? static_cast<const void*>(W2f.get()) : W2h.get());
    Guarded<float> gu(size_t(P * 2 * F), qnan()), h(size_t(P * F), qnan()), yp(size_t(P * D), qnan()), y(in.y0);
    DeviceOut<float> GU(gu), H(h), YP(yp), Y(y);
    ops::experts_by_id(gpu(), X.get(), c.T, c.K, D, F, IDS.get(), WT.get(), fc1, fc2, GU.get(), H.get(), YP.get(),
                       Y.get());
    EXPECT_TRUE(GU.fetch().intact() && H.fetch().intact() && YP.fetch().intact());
    expect_close("cuda experts_by_id " + dims(c.T, D, F), Y.fetch(), in.want(c), kTolF32Reduce);
  });
#endif
}
