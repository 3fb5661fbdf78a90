// GEMMs, dense projections (f32/bf16/f16 weights), causal attention over a cache, packed varlen
// attention with its backward, and cross-entropy with an ignore label, against double
// references; linear_f32 and the attention forwards also against their CUDA twins.
#include <algorithm>
#include <cmath>

#include "core/dtype.h"
#include "core/tensor.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_varlen.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/linear.h"
#include "kernels/ops.h"
#include "ops/device.h"
#include "ops/harness.h"

using namespace moe;
using namespace moe::ops_test;
namespace k = moe::kernels::cpu;
// Lambdas capture loop bindings by copy ([&, T = T]): clang before 16, whose clang-tidy lints
// this code, cannot capture structured bindings.

namespace {
std::string mnk(int64_t M, int64_t N, int64_t K) {
  return "[" + std::to_string(M) + "," + std::to_string(N) + "," + std::to_string(K) + "]";
}
const std::vector<std::tuple<int64_t, int64_t, int64_t>> kGemmShapes = {
    {1, 1, 1}, {3, 17, 5}, {17, 3, 127}, {130, 67, 33}};
}  // namespace

TEST(Gemm, AllThreeLayouts) {
  Rng rng(51);
  for (int layout = 0; layout < 3; ++layout) {
    const char* name = layout == 0 ? "gemm_nt" : layout == 1 ? "gemm_nn" : "gemm_tn";
    OpRow row(name, "fwd", On::Cpu);
    for (auto [M, N, K] : kGemmShapes)
      for (bool acc : {false, true}) {
        auto A = randn(size_t(M * K), rng), B = randn(size_t(N * K), rng), C0 = randn(size_t(M * N), rng);
        // A(m, kk) and B(kk, n) as each layout stores them.
        auto a = [&, M = M, K = K](int64_t m, int64_t kk) {
          return double(layout == 2 ? A[size_t(kk * M + m)] : A[size_t(m * K + kk)]);
        };
        auto b = [&, K = K, N = N](int64_t kk, int64_t n) {
          return double(layout == 0 ? B[size_t(n * K + kk)] : B[size_t(kk * N + n)]);
        };
        std::vector<double> want(static_cast<size_t>(M * N));
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n) {
            double s = acc ? C0[size_t(m * N + n)] : 0.0;
            for (int64_t kk = 0; kk < K; ++kk) s += a(m, kk) * b(kk, n);
            want[size_t(m * N + n)] = s;
          }
        Guarded<float> C = acc ? Guarded<float>(C0) : Guarded<float>(size_t(M * N), qnan());
        if (layout == 0) k::gemm_nt(M, N, K, A.data(), B.data(), C.data(), acc);
        else if (layout == 1) k::gemm_nn(M, N, K, A.data(), B.data(), C.data(), acc);
        else k::gemm_tn(M, N, K, A.data(), B.data(), C.data(), acc);
        expect_close(std::string(name) + mnk(M, N, K) + (acc ? " acc" : ""), C, want, kTolF32Reduce);
      }
  }
}

// The three GEMM layouts as the CUDA ops use them, through the facade: nt is linear_f32
// (y = x Wᵀ), nn linear_backward_input (dx = dy W), tn linear_backward_weight (dW += dyᵀ x).
TEST(GemmCuda, AllThreeLayouts) {
  for (int layout = 0; layout < 3; ++layout) {
    const char* name = layout == 0 ? "gemm_nt" : layout == 1 ? "gemm_nn" : "gemm_tn";
    OpRow row(name, "fwd", On::Cuda);
    if (std::string why; !cuda_ready(&why)) {
      row.skip(why);
      continue;
    }
#ifdef MOE_HAVE_CUDA
    Rng rng(151);
    for (auto [M, N, K] : kGemmShapes)
      for (bool acc : {false, true}) {
        if (layout == 2 && !acc) continue;  // the weight gradient always accumulates
        auto A = randn(size_t(M * K), rng), B = randn(size_t(N * K), rng), C0 = randn(size_t(M * N), rng);
        auto a = [&, M = M, K = K](int64_t m, int64_t kk) {
          return double(layout == 2 ? A[size_t(kk * M + m)] : A[size_t(m * K + kk)]);
        };
        auto b = [&, K = K, N = N](int64_t kk, int64_t n) {
          return double(layout == 0 ? B[size_t(n * K + kk)] : B[size_t(kk * N + n)]);
        };
        std::vector<double> want(static_cast<size_t>(M * N));
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n) {
            double s = acc ? C0[size_t(m * N + n)] : 0.0;
            for (int64_t kk = 0; kk < K; ++kk) s += a(m, kk) * b(kk, n);
            want[size_t(m * N + n)] = s;
          }
        DeviceIn<float> dA(A), dB(B);
        Guarded<float> C = acc ? Guarded<float>(C0) : Guarded<float>(size_t(M * N), qnan());
        DeviceOut<float> dC(C);
        if (layout == 0) {
          const Tensor W = Tensor::borrow({N, K}, DType::F32, dB.get(), nullptr);
          ops::linear(gpu(), dA.get(), M, W, nullptr, dC.get(), acc);
        } else if (layout == 1) {
          ops::linear_backward_input(gpu(), dA.get(), M, dB.get(), K, N, dC.get(), acc);
        } else {
          ops::linear_backward_weight(gpu(), dA.get(), dB.get(), K, M, N, dC.get());
        }
        expect_close(std::string("cuda ") + name + mnk(M, N, K) + (acc ? " acc" : ""), dC.fetch(), want, kTolF32Reduce);
      }
#endif
  }
}

namespace {
// Weights as stored in `dt` and the exact f32 values they hold.
Tensor weight(int64_t N, int64_t D, DType dt, Rng& rng, std::vector<float>* values) {
  *values = randn(size_t(N * D), rng, 0.2);
  Tensor w({N, D}, dt);
  convert_from_f32(values->data(), w.raw(), dt, values->size());
  convert_to_f32(w.raw(), dt, values->data(), values->size());
  return w;
}
std::vector<double> linear_ref(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>* bias,
                               int64_t T, int64_t N, int64_t D) {
  std::vector<double> y(static_cast<size_t>(T * N));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double s = bias ? (*bias)[size_t(n)] : 0.0;
      for (int64_t i = 0; i < D; ++i) s += double(x[size_t(t * D + i)]) * w[size_t(n * D + i)];
      y[size_t(t * N + n)] = s;
    }
  return y;
}
// Token counts that reach the GEMV, transposed-sgemm and sgemm paths.
const std::vector<std::tuple<int64_t, int64_t, int64_t>> kLinearShapes = {
    {1, 1, 1}, {3, 17, 33}, {17, 127, 64}, {300, 65, 48}};
}  // namespace

TEST(Linear, EveryWeightDtype) {
  Rng rng(52);
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    const std::string name = "linear_" + std::string(dt == DType::F32 ? "f32" : dt == DType::BF16 ? "bf16" : "f16");
    OpRow row(name, "fwd", On::Cpu);
    for (auto [T, N, D] : kLinearShapes)
      for (bool with_bias : {false, true}) {
        std::vector<float> wv;
        Tensor w = weight(N, D, dt, rng, &wv);
        auto x = randn(size_t(T * D), rng), bias = randn(size_t(N), rng);
        Guarded<float> y(size_t(T * N), qnan());
        k::linear(x.data(), T, w, with_bias ? bias.data() : nullptr, y.data());
        expect_close(name + mnk(T, N, D), y, linear_ref(x, wv, with_bias ? &bias : nullptr, T, N, D), kTolF32Reduce);
      }
  }
}

TEST(LinearCuda, F32) {
  CUDA_ROW("linear_f32", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(53);
  for (auto [T, N, D] : kLinearShapes)
    for (bool with_bias : {false, true}) {
      std::vector<float> wv;
      weight(N, D, DType::F32, rng, &wv);
      auto x = randn(size_t(T * D), rng), bias = randn(size_t(N), rng);
      DeviceIn<float> dx(x), dw(wv), db(bias);
      Guarded<float> y(size_t(T * N), qnan());
      DeviceOut<float> dy(y);
      const Tensor W = Tensor::borrow({N, D}, DType::F32, dw.get(), nullptr);
      ops::linear(gpu(), dx.get(), T, W, with_bias ? db.get() : nullptr, dy.get());
      expect_close("cuda linear_f32" + mnk(T, N, D), dy.fetch(),
                   linear_ref(x, wv, with_bias ? &bias : nullptr, T, N, D), kTolF32Reduce);
    }
#endif
}

// bf16 and f16 weights on the GPU: the GEMV path (up to 8 tokens, f32 sums as the CPU: its
// tolerance) with rows 16-byte aligned or not, and the GEMM path (x rounded to the weights'
// dtype: 1e-2 relative L2, the bf16 bound).
TEST(LinearCuda, HalfWeights) {
  CUDA_ROW("linear_bf16/f16", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(60);
  for (DType dt : {DType::BF16, DType::F16})
    for (auto [T, N, D] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 1, 1}, {1, 37, 256}, {3, 17, 33}, {8, 130, 512}, {8, 5, 260}, {9, 65, 64}, {300, 67, 48}})
      for (bool with_bias : {false, true})
        for (bool acc : {false, true}) {
          std::vector<float> wv;
          Tensor w = weight(N, D, dt, rng, &wv);
          auto x = randn(size_t(T * D), rng), bias = randn(size_t(N), rng), y0 = randn(size_t(T * N), rng);
          DeviceIn<float> dx(x), db(bias);
          DeviceIn<uint16_t> dw(std::vector<uint16_t>(static_cast<const uint16_t*>(w.raw()),
                                                      static_cast<const uint16_t*>(w.raw()) + N * D));
          Guarded<float> y(acc ? y0 : std::vector<float>(size_t(T * N), qnan()));
          DeviceOut<float> dy(y);
          const Tensor W = Tensor::borrow({N, D}, dt, dw.get(), nullptr);
          ops::linear(gpu(), dx.get(), T, W, with_bias ? db.get() : nullptr, dy.get(), acc);
          auto want = linear_ref(x, wv, with_bias ? &bias : nullptr, T, N, D);
          if (acc)
            for (size_t i = 0; i < want.size(); ++i) want[i] += y0[i];
          expect_close(
              std::string("cuda linear_") + (dt == DType::BF16 ? "bf16" : "f16") + mnk(T, N, D) + (acc ? " acc" : ""),
              dy.fetch(), want, T <= 8 ? kTolF32Reduce : 1e-4);
        }
#endif
}

// db += sum_t dy[t], on both backends: the same float additions in token order, so exact.
TEST(BiasBackward, TokenOrderSum) {
  for (On on : {On::Cpu, On::Cuda}) {
    OpRow row("bias_backward", "fwd", on);
    if (std::string why; on == On::Cuda && !cuda_ready(&why)) {
      row.skip(why);
      continue;
    }
    Rng rng(57);
    for (auto [T, N] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 17}, {300, 65}}) {
      auto dy = randn(size_t(T * N), rng), db0 = randn(size_t(N), rng);
      std::vector<float> serial = db0;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t n = 0; n < N; ++n) serial[size_t(n)] += dy[size_t(t * N + n)];
      Guarded<float> db(db0);
      const std::string what = (on == On::Cpu ? "bias_backward" : "cuda bias_backward") + mnk(T, N, 1);
      if (on == On::Cpu) {
        ops::bias_backward(moe::Backend{}, dy.data(), T, N, db.data());
        expect_close(what, db, widen(serial), kExact);
      }
#ifdef MOE_HAVE_CUDA
      if (on == On::Cuda) {
        DeviceIn<float> DY(dy);
        DeviceOut<float> DB(db);
        ops::bias_backward(gpu(), DY.get(), T, N, DB.get());
        expect_close(what, DB.fetch(), widen(serial), kExact);
      }
#endif
    }
  }
}

namespace {
// Causal GQA attention in double: query row t (position pos0 + t) over keys 0 .. pos0 + t of
// its sequence [s0, s1) (the cache case is one sequence starting at 0).
void attention_ref(const std::vector<double>& q, const std::vector<double>& kk, const std::vector<double>& v,
                   int64_t nh, int64_t ng, int64_t d, double scale, int64_t t, int64_t key0, int64_t key_end,
                   int64_t q_row, double* out) {
  for (int64_t h = 0; h < nh; ++h) {
    const int64_t g = h / (nh / ng);
    std::vector<double> p;
    double m = -1e300;
    for (int64_t j = key0; j < key_end; ++j) {
      double s = 0;
      for (int64_t c = 0; c < d; ++c) s += q[size_t((q_row * nh + h) * d + c)] * kk[size_t((j * ng + g) * d + c)];
      p.push_back(s * scale), m = std::max(m, s * scale);
    }
    double sum = 0;
    for (auto& x : p) sum += (x = std::exp(x - m));
    for (int64_t c = 0; c < d; ++c) {
      double o = 0;
      for (int64_t j = key0; j < key_end; ++j) o += p[size_t(j - key0)] / sum * v[size_t((j * ng + g) * d + c)];
      out[(q_row * nh + h) * d + c] = o;
    }
  }
  (void)t;
}
std::vector<double> varlen_ref(const std::vector<double>& q, const std::vector<double>& kk,
                               const std::vector<double>& v, int64_t T, int64_t nh, int64_t ng, int64_t d, double scale,
                               const std::vector<int32_t>& cu) {
  std::vector<double> out(static_cast<size_t>(T * nh * d));
  for (size_t s = 0; s + 1 < cu.size(); ++s)
    for (int64_t t = cu[s]; t < cu[s + 1]; ++t)
      attention_ref(q, kk, v, nh, ng, d, scale, t, cu[s], t + 1, t, out.data());
  return out;
}
// Context parallelism's queries: a CP2 rank 0's causal load-balanced chunks 0 and 3 of each
// sequence of `cu`: their query boundaries, positions in the sequence and rows in the whole.
void cp2_rank0_queries(const std::vector<int32_t>& cu, std::vector<int32_t>* qcu, std::vector<int32_t>* pos,
                       std::vector<int64_t>* rows) {
  qcu->assign(1, 0);
  for (size_t s = 0; s + 1 < cu.size(); ++s) {
    const int32_t L = cu[s + 1] - cu[s], c = (L + 3) / 4;
    for (int32_t p = 0; p < L; ++p)
      if (p < c || p >= 3 * c) pos->push_back(p), rows->push_back(cu[s] + p);
    qcu->push_back(int32_t(pos->size()));
  }
}
}  // namespace

TEST(Attention, CausalOverCache) {
  OpRow row("causal_attention", "fwd", On::Cpu);
  Rng rng(54);
  for (auto [T, pos0, nh, ng, d] : std::vector<std::array<int64_t, 5>>{
           {1, 0, 1, 1, 1}, {1, 17, 4, 2, 8}, {3, 5, 6, 3, 16}, {40, 0, 4, 1, 32}, {70, 9, 4, 2, 8}}) {
    const int64_t S = pos0 + T;
    auto q = randn(size_t(T * nh * d), rng), kk = randn(size_t(S * ng * d), rng), v = randn(size_t(S * ng * d), rng);
    const double scale = 1 / std::sqrt(double(d));
    Guarded<float> out(size_t(T * nh * d), qnan());
    k::AttentionShape s{T, pos0, nh, ng, d, float(scale)};
    k::causal_attention(s, q.data(), kk.data(), v.data(), out.data());
    std::vector<double> want(static_cast<size_t>(T * nh * d));
    const auto qd = widen(q), kd = widen(kk), vd = widen(v);
    for (int64_t t = 0; t < T; ++t) attention_ref(qd, kd, vd, nh, ng, d, scale, t, 0, pos0 + t + 1, t, want.data());
    expect_close("causal_attention T=" + std::to_string(T) + " pos0=" + std::to_string(pos0), out, want, kTolF32Reduce);
  }
}

// The CUDA twin on the same reference: decode steps over long caches (the keys cut into splits
// merged by a second kernel), prefill after a cache, odd head dims, GQA, MHA and d = 256.
TEST(AttentionCuda, CausalOverCache) {
  CUDA_ROW("causal_attention", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(58);
  for (auto [T, pos0, nh, ng, d] : std::vector<std::array<int64_t, 5>>{{1, 0, 1, 1, 1},
                                                                       {1, 17, 4, 2, 8},
                                                                       {3, 5, 6, 3, 20},
                                                                       {1, 1500, 8, 2, 128},
                                                                       {2, 4000, 4, 4, 100},
                                                                       {40, 0, 4, 1, 32},
                                                                       {70, 9, 4, 2, 256},
                                                                       {300, 0, 2, 1, 64}}) {
    const int64_t S = pos0 + T;
    auto q = randn(size_t(T * nh * d), rng), kk = randn(size_t(S * ng * d), rng), v = randn(size_t(S * ng * d), rng);
    const double scale = 1 / std::sqrt(double(d));
    DeviceIn<float> Q(q), K(kk), V(v);
    Guarded<float> out(size_t(T * nh * d), qnan());
    DeviceOut<float> O(out);
    ops::causal_attention(gpu(), k::AttentionShape{T, pos0, nh, ng, d, float(scale)}, Q.get(), K.get(), V.get(),
                          O.get());
    std::vector<double> want(static_cast<size_t>(T * nh * d));
    const auto qd = widen(q), kd = widen(kk), vd = widen(v);
    for (int64_t t = 0; t < T; ++t) attention_ref(qd, kd, vd, nh, ng, d, scale, t, 0, pos0 + t + 1, t, want.data());
    expect_close(
        "cuda causal_attention T=" + std::to_string(T) + " pos0=" + std::to_string(pos0) + " d=" + std::to_string(d),
        O.fetch(), want, kTolF32Reduce);
  }
#endif
}

TEST(Attention, VarlenForwardAndBackward) {
  Rng rng(55);
  struct Case {
    int64_t nh, ng, d;
    std::vector<int32_t> cu;
    bool fd;  // run the finite-difference check of the backward
  };
  // The last case has sequences longer than the kernels' 128-row query blocks: a partial block,
  // and one ending exactly on a block boundary.
  for (const Case& c : std::vector<Case>{{1, 1, 1, {0, 1}, true},
                                         {4, 2, 8, {0, 3, 4, 9}, true},
                                         {3, 3, 5, {0, 7}, true},
                                         {6, 2, 16, {0, 17, 40, 41, 64}, false},
                                         {2, 1, 3, {0, 130, 386}, true}}) {
    const int64_t T = c.cu.back(), nh = c.nh, ng = c.ng, d = c.d;
    const double scale = 1 / std::sqrt(double(d));
    k::VarlenAttention a{nh, ng, d, float(scale), c.cu.data(), int64_t(c.cu.size()) - 1};
    auto q = randn(size_t(T * nh * d), rng), kk = randn(size_t(T * ng * d), rng), v = randn(size_t(T * ng * d), rng);
    Guarded<float> out(size_t(T * nh * d), qnan()), lse(size_t(T * nh), qnan());
    const std::string what = "attention_varlen T=" + std::to_string(T) + " nh=" + std::to_string(nh);
    {
      OpRow row("attention_varlen", "fwd", On::Cpu);
      k::attention_varlen_forward(a, q.data(), kk.data(), v.data(), out.data(), lse.data());
      expect_close(what, out, varlen_ref(widen(q), widen(kk), widen(v), T, nh, ng, d, scale, c.cu), kTolF32Reduce);
      EXPECT_TRUE(lse.intact()) << what;
    }
    if (!c.fd) continue;
    OpRow row("attention_varlen", "bwd (fd)", On::Cpu);
    auto dout = randn(size_t(T * nh * d), rng);
    Guarded<float> dq(q.size(), qnan()), dk(kk.size(), qnan()), dv(v.size(), qnan());
    k::attention_varlen_backward(a, q.data(), kk.data(), v.data(), out.data(), lse.data(), dout.data(), dq.data(),
                                 dk.data(), dv.data());
    EXPECT_TRUE(dq.intact() && dk.intact() && dv.intact()) << what;
    const auto r = widen(dout), qd = widen(q), kd = widen(kk), vd = widen(v);
    expect_fd(
        what + " dq",
        [&](const std::vector<double>& x) { return dotv(r, varlen_ref(x, kd, vd, T, nh, ng, d, scale, c.cu)); }, qd,
        dq.vec());
    expect_fd(
        what + " dk",
        [&](const std::vector<double>& x) { return dotv(r, varlen_ref(qd, x, vd, T, nh, ng, d, scale, c.cu)); }, kd,
        dk.vec());
    expect_fd(
        what + " dv",
        [&](const std::vector<double>& x) { return dotv(r, varlen_ref(qd, kd, x, T, nh, ng, d, scale, c.cu)); }, vd,
        dv.vec());
  }
  no_cuda_twin("attention_varlen", "bwd (fd)");
}

// The CUDA forward on the same cases and reference, its lse against the CPU kernel's; then
// context parallelism's queries at positions (keys the whole sequences) against the CPU kernel.
TEST(AttentionCuda, VarlenForward) {
  CUDA_ROW("attention_varlen", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(59);
  struct Case {
    int64_t nh, ng, d;
    std::vector<int32_t> cu;
  };
  for (const Case& c : std::vector<Case>{{1, 1, 1, {0, 1}},
                                         {4, 2, 8, {0, 3, 4, 9}},
                                         {3, 3, 5, {0, 7}},
                                         {6, 2, 16, {0, 17, 17, 40, 41, 64}},
                                         {2, 1, 100, {0, 130, 386}}}) {
    const int64_t T = c.cu.back(), nh = c.nh, ng = c.ng, d = c.d;
    const double scale = 1 / std::sqrt(double(d));
    auto q = randn(size_t(T * nh * d), rng), kk = randn(size_t(T * ng * d), rng), v = randn(size_t(T * ng * d), rng);
    const k::VarlenAttention host{nh, ng, d, float(scale), c.cu.data(), int64_t(c.cu.size()) - 1};
    std::vector<float> out_cpu(q.size()), lse_cpu(size_t(T * nh));
    k::attention_varlen_forward(host, q.data(), kk.data(), v.data(), out_cpu.data(), lse_cpu.data());
    DeviceIn<float> Q(q), K(kk), V(v);
    DeviceIn<int32_t> CU(c.cu);
    Guarded<float> out(q.size(), qnan()), lse(size_t(T * nh), qnan());
    DeviceOut<float> O(out), LSE(lse);
    const k::VarlenAttention dev{nh, ng, d, float(scale), CU.get(), int64_t(c.cu.size()) - 1};
    ops::attention_varlen(gpu(), dev, Q.get(), K.get(), V.get(), O.get(), LSE.get());
    const std::string what = "cuda attention_varlen T=" + std::to_string(T) + " d=" + std::to_string(d);
    expect_close(what, O.fetch(), varlen_ref(widen(q), widen(kk), widen(v), T, nh, ng, d, scale, c.cu), kTolF32Reduce);
    expect_close(what + " lse", LSE.fetch(), widen(lse_cpu), kTolF32Reduce);
  }
  // Queries at positions: CP2 rank 0's chunks 0 and 3 of each sequence.
  const int64_t nh = 4, ng = 2, d = 8;
  const std::vector<int32_t> cu = {0, 5, 17, 317};
  std::vector<int32_t> qcu, pos;
  std::vector<int64_t> rows;
  cp2_rank0_queries(cu, &qcu, &pos, &rows);
  const int64_t T = cu.back(), Tq = int64_t(pos.size());
  const float scale = 1 / std::sqrt(float(d));
  auto qs = randn(size_t(Tq * nh * d), rng), kk = randn(size_t(T * ng * d), rng), v = randn(size_t(T * ng * d), rng);
  const k::VarlenAttention host{nh, ng, d, scale, qcu.data(), int64_t(qcu.size()) - 1, cu.data(), pos.data()};
  std::vector<float> out_cpu(qs.size()), lse_cpu(size_t(Tq * nh));
  k::attention_varlen_forward(host, qs.data(), kk.data(), v.data(), out_cpu.data(), lse_cpu.data());
  DeviceIn<float> Q(qs), K(kk), V(v);
  DeviceIn<int32_t> QCU(qcu), CU(cu), POS(pos);
  Guarded<float> out(qs.size(), qnan()), lse(size_t(Tq * nh), qnan());
  DeviceOut<float> O(out), LSE(lse);
  const k::VarlenAttention dev{nh, ng, d, scale, QCU.get(), int64_t(qcu.size()) - 1, CU.get(), POS.get()};
  ops::attention_varlen(gpu(), dev, Q.get(), K.get(), V.get(), O.get(), LSE.get());
  expect_close("cuda attention_varlen at positions", O.fetch(), widen(out_cpu), kTolF32Reduce);
  expect_close("cuda attention_varlen at positions lse", LSE.fetch(), widen(lse_cpu), kTolF32Reduce);
#endif
}

// Context parallelism: the queries are some rows of each sequence (here a CP2 rank 0's causal
// load-balanced chunks 0 and 3, with a gap inside a 128-row query block), the keys all of them.
// Forward against the reference on the whole sequences; backward against the whole-sequence
// kernel (tested above by finite differences) with d(out) zero on the other rows.
TEST(Attention, VarlenQueriesAtPositions) {
  OpRow row("attention_varlen", "fwd+bwd (q_pos)", On::Cpu);
  Rng rng(57);
  const int64_t nh = 4, ng = 2, d = 8;
  const std::vector<int32_t> cu = {0, 5, 17, 317};
  const int64_t T = cu.back();
  std::vector<int32_t> qcu, pos;
  std::vector<int64_t> rows;
  cp2_rank0_queries(cu, &qcu, &pos, &rows);
  const int64_t Tq = int64_t(pos.size());
  const double scale = 1 / std::sqrt(double(d));
  auto q = randn(size_t(T * nh * d), rng), kk = randn(size_t(T * ng * d), rng), v = randn(size_t(T * ng * d), rng);
  std::vector<float> qs(size_t(Tq * nh * d));
  for (int64_t i = 0; i < Tq; ++i) std::copy_n(q.begin() + rows[size_t(i)] * nh * d, nh * d, qs.begin() + i * nh * d);
  k::VarlenAttention part{nh, ng, d, float(scale), qcu.data(), int64_t(qcu.size()) - 1, cu.data(), pos.data()};
  Guarded<float> out(qs.size(), qnan()), lse(size_t(Tq * nh), qnan());
  k::attention_varlen_forward(part, qs.data(), kk.data(), v.data(), out.data(), lse.data());
  const auto whole = varlen_ref(widen(q), widen(kk), widen(v), T, nh, ng, d, scale, cu);
  std::vector<double> want(qs.size());
  for (int64_t i = 0; i < Tq; ++i)
    std::copy_n(whole.begin() + rows[size_t(i)] * nh * d, nh * d, want.begin() + i * nh * d);
  expect_close("attention_varlen at positions", out, want, kTolF32Reduce);
  EXPECT_TRUE(lse.intact());

  const k::VarlenAttention all{nh, ng, d, float(scale), cu.data(), int64_t(cu.size()) - 1};
  std::vector<float> out_all(q.size()), lse_all(size_t(T * nh)), dout_all(q.size(), 0.0f);
  k::attention_varlen_forward(all, q.data(), kk.data(), v.data(), out_all.data(), lse_all.data());
  auto dout = randn(qs.size(), rng);
  for (int64_t i = 0; i < Tq; ++i)
    std::copy_n(dout.begin() + i * nh * d, nh * d, dout_all.begin() + rows[size_t(i)] * nh * d);
  std::vector<float> dq_all(q.size()), dk_all(kk.size()), dv_all(v.size());
  k::attention_varlen_backward(all, q.data(), kk.data(), v.data(), out_all.data(), lse_all.data(), dout_all.data(),
                               dq_all.data(), dk_all.data(), dv_all.data());
  Guarded<float> dq(qs.size(), qnan()), dk(kk.size(), qnan()), dv(v.size(), qnan());
  k::attention_varlen_backward(part, qs.data(), kk.data(), v.data(), out.data(), lse.data(), dout.data(), dq.data(),
                               dk.data(), dv.data());
  std::vector<double> dq_want(qs.size());
  for (int64_t i = 0; i < Tq; ++i)
    std::copy_n(dq_all.begin() + rows[size_t(i)] * nh * d, nh * d, dq_want.begin() + i * nh * d);
  expect_close("attention_varlen at positions dq", dq, dq_want, kTolF32Reduce);
  expect_close("attention_varlen at positions dk", dk, widen(dk_all), kTolF32Reduce);
  expect_close("attention_varlen at positions dv", dv, widen(dv_all), kTolF32Reduce);
  EXPECT_TRUE(dq.intact() && dk.intact() && dv.intact());
  no_cuda_twin("attention_varlen", "fwd+bwd (q_pos)");
}

TEST(CrossEntropy, LossAndGradientWithIgnoreLabel) {
  Rng rng(56);
  for (auto [T, V] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 17}, {17, 127}, {9, 1000}}) {
    auto logits = randn(size_t(T * V), rng, 3.0);
    std::vector<int32_t> labels(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) labels[size_t(t)] = t % 3 == 2 ? -100 : int32_t(rng.next() % uint64_t(V));
    const float scale = 0.25f;
    auto loss_ref = [&, T = T, V = V](const std::vector<double>& l, int64_t* count, int64_t* correct) {
      double s = 0;
      for (int64_t t = 0; t < T; ++t) {
        if (labels[size_t(t)] < 0) continue;
        const double* x = l.data() + t * V;
        const double m = *std::max_element(x, x + V);
        double z = 0;
        for (int64_t i = 0; i < V; ++i) z += std::exp(x[i] - m);
        s += m + std::log(z) - x[labels[size_t(t)]];
        if (count) ++*count, *correct += std::max_element(x, x + V) - x == labels[size_t(t)];
      }
      return s;
    };
    Guarded<float> g(logits);
    k::CrossEntropySums sums;
    {
      OpRow row("cross_entropy", "fwd", On::Cpu);
      sums = k::cross_entropy_forward_backward(g.data(), T, V, labels.data(), scale);
      int64_t count = 0, correct = 0;
      const double want = loss_ref(widen(logits), &count, &correct);
      EXPECT_NEAR(sums.loss, want, 1e-6 * (1 + std::fabs(want))) << "T=" << T << " V=" << V;
      EXPECT_EQ(sums.count, count);
      EXPECT_EQ(sums.correct, correct);
    }
    OpRow row("cross_entropy", "bwd (fd)", On::Cpu);
    EXPECT_TRUE(g.intact());
    if (V > 200) continue;
    expect_fd(
        "cross_entropy T=" + std::to_string(T) + " V=" + std::to_string(V),
        [&](const std::vector<double>& l) { return scale * loss_ref(l, nullptr, nullptr); }, widen(logits), g.vec());
  }
}

TEST(CrossEntropyCuda, LossAndGradientWithIgnoreLabel) {
  OpRow fwd_row("cross_entropy", "fwd", On::Cuda);
  if (std::string why; !cuda_ready(&why)) fwd_row.skip(why);
  CUDA_ROW("cross_entropy", "bwd (fd)");
#ifdef MOE_HAVE_CUDA
  Rng rng(156);
  for (auto [T, V] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 17}, {17, 127}, {9, 1000}}) {
    auto logits = randn(size_t(T * V), rng, 3.0);
    std::vector<int32_t> labels(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) labels[size_t(t)] = t % 3 == 2 ? -100 : int32_t(rng.next() % uint64_t(V));
    const float scale = 0.25f;
    auto loss_ref = [&, T = T, V = V](const std::vector<double>& l, int64_t* count, int64_t* correct) {
      double s = 0;
      for (int64_t t = 0; t < T; ++t) {
        if (labels[size_t(t)] < 0) continue;
        const double* x = l.data() + t * V;
        const double m = *std::max_element(x, x + V);
        double z = 0;
        for (int64_t i = 0; i < V; ++i) z += std::exp(x[i] - m);
        s += m + std::log(z) - x[labels[size_t(t)]];
        if (count) ++*count, *correct += std::max_element(x, x + V) - x == labels[size_t(t)];
      }
      return s;
    };
    Guarded<float> g(logits);
    DeviceOut<float> G(g);
    DeviceIn<int32_t> L(labels);
    const auto sums = ops::cross_entropy(gpu(), G.get(), T, V, L.get(), scale);
    G.fetch();
    int64_t count = 0, correct = 0;
    const double want = loss_ref(widen(logits), &count, &correct);
    EXPECT_NEAR(sums.loss, want, 1e-6 * (1 + std::fabs(want))) << "cuda T=" << T << " V=" << V;
    EXPECT_EQ(sums.count, count);
    EXPECT_EQ(sums.correct, correct);
    EXPECT_TRUE(g.intact());
    if (V > 200) continue;
    expect_fd(
        "cuda cross_entropy T=" + std::to_string(T) + " V=" + std::to_string(V),
        [&](const std::vector<double>& l) { return scale * loss_ref(l, nullptr, nullptr); }, widen(logits), g.vec());
  }
#endif
}
