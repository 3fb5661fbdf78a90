// The ops lifted from the model's loops (embedding, QKV layout, token permutation, shared-expert
// gate, optimizer update) against double references written here, with structured inputs:
// repeated ids, dropped (-1) experts, experts with no tokens, all tokens to one expert, padding.
#include <algorithm>
#include <cmath>

#include "core/dtype.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gate.h"
#include "kernels/cpu/permute.h"
#include "kernels/cpu/qkv.h"
#include "kernels/ops.h"
#include "ops/device.h"
#include "ops/harness.h"
#ifdef MOE_HAVE_CUDA
#include "kernels/cuda/elementwise.h"
#endif

using namespace moe;
using namespace moe::ops_test;
namespace k = moe::kernels::cpu;
// Lambdas capture loop bindings by copy ([&, T = T]): clang before 16, whose clang-tidy lints
// this code, cannot capture structured bindings.

namespace {

[[maybe_unused]] std::string dims(int64_t a, int64_t b, int64_t c = -1) {
  return "[" + std::to_string(a) + "," + std::to_string(b) + (c >= 0 ? "," + std::to_string(c) : "") + "]";
}

std::vector<int32_t> random_ids(int64_t T, int64_t V, Rng& rng) {
  std::vector<int32_t> ids(static_cast<size_t>(T));
  for (auto& i : ids) i = int32_t(rng.next() % uint64_t(V));
  return ids;
}

}  // namespace

TEST(Embedding, Gather) {
  OpRow row("embedding_gather", "fwd", On::Cpu);
  Rng rng(21);
  for (DType dt : {DType::F32, DType::BF16, DType::F16})
    for (auto [T, V, D] :
         std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 1}, {3, 5, 17}, {17, 127, 33}, {300, 50, 256}}) {
      auto t32 = randn(size_t(V * D), rng);
      std::vector<uint16_t> t16(t32.size());
      const void* table = t32.data();
      if (dt != DType::F32) {
        convert_from_f32(t32.data(), t16.data(), dt, t32.size());
        convert_to_f32(t16.data(), dt, t32.data(), t32.size());  // the values the table holds
        table = t16.data();
      }
      auto ids = random_ids(T, V, rng);
      std::vector<double> want;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < D; ++i) want.push_back(t32[size_t(ids[size_t(t)] * D + i)]);
      Guarded<float> out(size_t(T * D), qnan());
      k::embedding_gather(table, dt, V, D, ids.data(), T, out.data());
      expect_close(std::string("embedding_gather ") + std::string(dtype_name(dt)) + dims(T, V, D), out, want, kExact);
    }
}

TEST(Embedding, ScatterAddIsGatherBackward) {
  OpRow row("embedding_gather", "bwd (fd)", On::Cpu);
  Rng rng(22);
  for (auto [T, V, D] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 1}, {7, 3, 5}, {17, 11, 9}}) {
    auto table = randn(size_t(V * D), rng), dout = randn(size_t(T * D), rng), d0 = randn(size_t(V * D), rng);
    auto ids = random_ids(T, V, rng);  // V < T: ids repeat
    Guarded<float> dt(d0);
    k::embedding_scatter_add(dout.data(), ids.data(), T, D, dt.data());
    EXPECT_TRUE(dt.intact());
    std::vector<float> g(d0.size());
    for (size_t i = 0; i < g.size(); ++i) g[i] = dt[i] - d0[i];
    const auto r = widen(dout);
    expect_fd(
        "embedding_scatter_add " + dims(T, V, D),
        [&, T = T, D = D](const std::vector<double>& tb) {
          double s = 0;
          for (int64_t t = 0; t < T; ++t)
            for (int64_t i = 0; i < D; ++i) s += r[size_t(t * D + i)] * tb[size_t(ids[size_t(t)] * D + i)];
          return s;
        },
        widen(table), g);
  }
  // Big enough for the column-parallel path: bitwise equal to the serial token-order sum.
  const int64_t T = 400, V = 7, D = 256;
  auto dout = randn(size_t(T * D), rng);
  auto ids = random_ids(T, V, rng);
  std::vector<double> want(static_cast<size_t>(V * D), 0.0);
  std::vector<float> serial(static_cast<size_t>(V * D), 0.0f);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < D; ++i) serial[size_t(ids[size_t(t)] * D + i)] += dout[size_t(t * D + i)];
  Guarded<float> dt(size_t(V * D), 0.0f);
  k::embedding_scatter_add(dout.data(), ids.data(), T, D, dt.data());
  expect_close("embedding_scatter_add parallel", dt, widen(serial), kExact);
}

namespace {
// Where q, k, v of (t, head or group, i) sit in a fused row of the Megatron layout.
struct QkvRef {
  int64_t nh, ng, d;
  int64_t rows() const { return ng * (nh / ng + 2) * d; }
  int64_t q(int64_t h, int64_t i) const { return (h / (nh / ng)) * (nh / ng + 2) * d + (h % (nh / ng)) * d + i; }
  int64_t k(int64_t g, int64_t i) const { return g * (nh / ng + 2) * d + (nh / ng) * d + i; }
  int64_t v(int64_t g, int64_t i) const { return k(g, i) + d; }
};
}  // namespace

TEST(Qkv, SplitAndMerge) {
  OpRow fwd("qkv_split", "fwd", On::Cpu);
  Rng rng(23);
  for (auto [T, nh, ng, d] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
           {1, 1, 1, 1}, {3, 4, 2, 5}, {17, 6, 3, 16}, {5, 8, 8, 3}, {300, 16, 4, 32}}) {
    QkvRef L{nh, ng, d};
    ASSERT_EQ(k::qkv_rows(nh, ng, d), L.rows());
    auto qkv = randn(size_t(T * L.rows()), rng);
    Guarded<float> q(size_t(T * nh * d), qnan()), kk(size_t(T * ng * d), qnan()), v(size_t(T * ng * d), qnan());
    k::qkv_split(qkv.data(), T, nh, ng, d, q.data(), kk.data(), v.data());
    std::vector<double> wq, wk, wv;
    for (int64_t t = 0; t < T; ++t) {
      const float* r = qkv.data() + t * L.rows();
      for (int64_t h = 0; h < nh; ++h)
        for (int64_t i = 0; i < d; ++i) wq.push_back(r[L.q(h, i)]);
      for (int64_t g = 0; g < ng; ++g)
        for (int64_t i = 0; i < d; ++i) wk.push_back(r[L.k(g, i)]), wv.push_back(r[L.v(g, i)]);
    }
    const std::string s = dims(T, nh, ng) + " d=" + std::to_string(d);
    expect_close("qkv_split q " + s, q, wq, kExact);
    expect_close("qkv_split k " + s, kk, wk, kExact);
    expect_close("qkv_split v " + s, v, wv, kExact);
  }
}

TEST(Qkv, MergeIsSplitBackward) {
  OpRow bwd("qkv_split", "bwd (fd)", On::Cpu);
  Rng rng(24);
  for (auto [T, nh, ng, d] :
       std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{{1, 1, 1, 1}, {3, 4, 2, 5}, {2, 6, 3, 4}}) {
    QkvRef L{nh, ng, d};
    auto qkv = randn(size_t(T * L.rows()), rng);
    auto dq = randn(size_t(T * nh * d), rng), dk = randn(size_t(T * ng * d), rng), dv = randn(size_t(T * ng * d), rng);
    Guarded<float> dqkv(size_t(T * L.rows()), qnan());
    k::qkv_merge(dq.data(), dk.data(), dv.data(), T, nh, ng, d, dqkv.data());
    EXPECT_TRUE(dqkv.intact());
    expect_fd(
        "qkv_merge " + dims(T, nh, ng),
        [&, T = T, nh = nh, d = d, ng = ng](const std::vector<double>& x) {
          double s = 0;
          for (int64_t t = 0; t < T; ++t) {
            const double* r = x.data() + t * L.rows();
            for (int64_t h = 0; h < nh; ++h)
              for (int64_t i = 0; i < d; ++i) s += dq[size_t((t * nh + h) * d + i)] * r[L.q(h, i)];
            for (int64_t g = 0; g < ng; ++g)
              for (int64_t i = 0; i < d; ++i)
                s += dk[size_t((t * ng + g) * d + i)] * r[L.k(g, i)] + dv[size_t((t * ng + g) * d + i)] * r[L.v(g, i)];
          }
          return s;
        },
        widen(qkv), dqkv.vec());
  }
}

namespace {

// A routing with structure: `mode` 0 random, 1 all pairs to expert E-1, 2 some dropped (-1) and
// expert 0 never chosen. Ids within a token are distinct, as top-k makes them.
struct RoutingCase {
  int64_t T, K, E;
  std::vector<int32_t> expert;
  std::vector<float> weight;
};
RoutingCase routing_case(int64_t T, int64_t K, int64_t E, int mode, Rng& rng) {
  RoutingCase c{T, K, E, {}, {}};
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> pool;
    for (int32_t e = (mode == 2 && E > K ? 1 : 0); e < E; ++e) pool.push_back(e);
    for (int64_t k = 0; k < K; ++k) {
      const size_t j = size_t(rng.next() % pool.size());
      int32_t e = mode == 1 ? int32_t(E - 1 - k) : pool[j];
      if (mode != 1) pool.erase(pool.begin() + long(j));
      if (mode == 2 && rng.uniform() < 0.3) e = -1;
      c.expert.push_back(e);
      c.weight.push_back(e < 0 ? 0.0f : float(rng.uniform()));
    }
  }
  return c;
}

// The reference row map: expert blocks in id order, token order within each, padded.
std::vector<int64_t> ref_rows(const RoutingCase& c, int64_t pad_to, std::vector<int64_t>* counts) {
  std::vector<int64_t> rows;
  counts->assign(size_t(c.E), 0);
  for (int64_t e = 0; e < c.E; ++e) {
    for (int64_t i = 0; i < c.T * c.K; ++i)
      if (c.expert[size_t(i)] == e) rows.push_back(i), ++(*counts)[size_t(e)];
    for (int64_t p = (*counts)[size_t(e)]; p < pad_to; ++p) rows.push_back(-1);
  }
  return rows;
}

struct PermuteShape {
  int64_t T, K, E;
  int mode;
  bool pad;
};
const std::vector<PermuteShape> kPermuteShapes = {{1, 1, 1, 0, false},  {3, 2, 5, 0, false}, {17, 2, 4, 1, false},
                                                  {17, 3, 7, 2, false}, {17, 3, 7, 2, true}, {127, 4, 16, 0, true},
                                                  {200, 2, 8, 0, false}};

}  // namespace

TEST(Permute, PlanAndPermute) {
  OpRow plan_row("permute_plan", "fwd", On::Cpu);
  Rng rng(25);
  for (const auto& s : kPermuteShapes) {
    OpRow row("permute", "fwd", On::Cpu);
    RoutingCase c = routing_case(s.T, s.K, s.E, s.mode, rng);
    std::vector<int64_t> want_counts;
    int64_t pad_to = 0;
    if (s.pad) {
      ref_rows(c, 0, &want_counts);
      pad_to = *std::max_element(want_counts.begin(), want_counts.end()) + 1;
    }
    const std::vector<int64_t> want_rows = ref_rows(c, pad_to, &want_counts);
    const int64_t cap = k::permute_max_rows(s.T, s.K, s.E, pad_to);
    Guarded<int64_t> counts(size_t(s.E), -7), offsets(size_t(s.E), -7), slots(size_t(cap), -7);
    const int64_t R =
        k::permute_plan(c.expert.data(), s.T, s.K, s.E, pad_to, counts.data(), offsets.data(), slots.data());
    const std::string what =
        "permute " + dims(s.T, s.K, s.E) + " mode " + std::to_string(s.mode) + (s.pad ? " padded" : "");
    EXPECT_TRUE(counts.intact() && offsets.intact() && slots.intact()) << what;
    ASSERT_EQ(R, int64_t(want_rows.size())) << what;
    EXPECT_EQ(counts.vec(), want_counts) << what;
    EXPECT_EQ(std::vector<int64_t>(slots.data(), slots.data() + R), want_rows) << what;
    int64_t off = 0;
    for (int64_t e = 0; e < s.E; ++e) {
      EXPECT_EQ(offsets[size_t(e)], off) << what << " expert " << e;
      off += pad_to > 0 ? pad_to : want_counts[size_t(e)];
    }
    const int64_t D = 1 + s.T % 13;
    auto x = randn(size_t(s.T * D), rng);
    Guarded<float> xp(size_t(R * D), qnan());
    k::permute(x.data(), D, slots.data(), R, s.K, xp.data());
    std::vector<double> want;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t i = 0; i < D; ++i)
        want.push_back(want_rows[size_t(r)] < 0 ? 0.0 : x[size_t(want_rows[size_t(r)] / s.K * D + i)]);
    expect_close(what, xp, want, kExact);
  }
}

TEST(Permute, PermuteBackwardAdd) {
  OpRow row("permute", "bwd (fd)", On::Cpu);
  Rng rng(26);
  for (const auto& s : kPermuteShapes) {
    if (s.T > 20) continue;
    RoutingCase c = routing_case(s.T, s.K, s.E, s.mode, rng);
    std::vector<int64_t> counts(static_cast<size_t>(s.E)), offsets(static_cast<size_t>(s.E));
    const int64_t pad_to = s.pad ? s.T : 0;
    std::vector<int64_t> slots(static_cast<size_t>(k::permute_max_rows(s.T, s.K, s.E, pad_to)));
    const int64_t R =
        k::permute_plan(c.expert.data(), s.T, s.K, s.E, pad_to, counts.data(), offsets.data(), slots.data());
    const int64_t D = 3;
    auto x = randn(size_t(s.T * D), rng), dxp = randn(size_t(R * D), rng), d0 = randn(size_t(s.T * D), rng);
    Guarded<float> dx(d0);
    k::permute_backward_add(dxp.data(), D, slots.data(), R, s.K, dx.data());
    EXPECT_TRUE(dx.intact());
    std::vector<float> g(d0.size());
    for (size_t i = 0; i < g.size(); ++i) g[i] = dx[i] - d0[i];
    expect_fd(
        "permute_backward_add " + dims(s.T, s.K, s.E),
        [&](const std::vector<double>& xv) {
          double sum = 0;
          for (int64_t r = 0; r < R; ++r)
            if (slots[size_t(r)] >= 0)
              for (int64_t i = 0; i < D; ++i)
                sum += dxp[size_t(r * D + i)] * xv[size_t(slots[size_t(r)] / s.K * D + i)];
          return sum;
        },
        widen(x), g);
  }
}

namespace {
// out[t] (+)= sum over rows of token t of weight * y_perm[row], in double.
std::vector<double> unpermute_ref(const std::vector<double>& y, const std::vector<double>& w,
                                  const std::vector<int64_t>& slots, int64_t R, int64_t K, int64_t T, int64_t D) {
  std::vector<double> out(static_cast<size_t>(T * D), 0.0);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t s = slots[size_t(r)];
    if (s < 0) continue;
    for (int64_t i = 0; i < D; ++i) out[size_t(s / K * D + i)] += w[size_t(s)] * y[size_t(r * D + i)];
  }
  return out;
}
}  // namespace

TEST(Permute, UnpermuteAdd) {
  OpRow row("unpermute_add", "fwd", On::Cpu);
  Rng rng(27);
  for (const auto& s : kPermuteShapes) {
    RoutingCase c = routing_case(s.T, s.K, s.E, s.mode, rng);
    std::vector<int64_t> counts(static_cast<size_t>(s.E)), offsets(static_cast<size_t>(s.E));
    const int64_t pad_to = s.pad ? s.T : 0;
    std::vector<int64_t> slots(static_cast<size_t>(k::permute_max_rows(s.T, s.K, s.E, pad_to)));
    const int64_t R =
        k::permute_plan(c.expert.data(), s.T, s.K, s.E, pad_to, counts.data(), offsets.data(), slots.data());
    const int64_t D = s.T > 100 ? 400 : 1 + s.T % 13;  // the largest takes the column-parallel path
    auto y = randn(size_t(R * D), rng), out0 = randn(size_t(s.T * D), rng);
    Guarded<float> out(out0);
    k::unpermute_add(y.data(), D, slots.data(), R, s.K, c.weight.data(), out.data());
    auto want = unpermute_ref(widen(y), widen(c.weight), slots, R, s.K, s.T, D);
    for (size_t i = 0; i < want.size(); ++i) want[i] += out0[i];
    expect_close("unpermute_add " + dims(s.T, s.K, s.E), out, want, kTolF32);
  }
}

TEST(Permute, UnpermuteAddBackward) {
  OpRow row("unpermute_add", "bwd (fd)", On::Cpu);
  Rng rng(28);
  for (const auto& s : kPermuteShapes) {
    if (s.T > 20) continue;
    RoutingCase c = routing_case(s.T, s.K, s.E, s.mode, rng);
    std::vector<int64_t> counts(static_cast<size_t>(s.E)), offsets(static_cast<size_t>(s.E));
    const int64_t pad_to = s.pad ? s.T : 0;
    std::vector<int64_t> slots(static_cast<size_t>(k::permute_max_rows(s.T, s.K, s.E, pad_to)));
    const int64_t R =
        k::permute_plan(c.expert.data(), s.T, s.K, s.E, pad_to, counts.data(), offsets.data(), slots.data());
    const int64_t D = 4;
    auto y = randn(size_t(R * D), rng), dout = randn(size_t(s.T * D), rng);
    Guarded<float> dy(size_t(R * D), qnan()), dw(size_t(s.T * s.K), qnan());
    k::unpermute_add_backward(dout.data(), y.data(), D, slots.data(), R, s.T, s.K, c.weight.data(), dy.data(),
                              dw.data());
    EXPECT_TRUE(dy.intact() && dw.intact());
    const auto r = widen(dout), yd = widen(y), wd = widen(c.weight);
    const std::string what = "unpermute_add_backward " + dims(s.T, s.K, s.E);
    expect_fd(
        what + " dy",
        [&](const std::vector<double>& v) { return dotv(r, unpermute_ref(v, wd, slots, R, s.K, s.T, D)); }, yd,
        dy.vec());
    expect_fd(
        what + " dweight",
        [&](const std::vector<double>& v) { return dotv(r, unpermute_ref(yd, v, slots, R, s.K, s.T, D)); }, wd,
        dw.vec());
  }
}

namespace {
std::vector<double> gate_ref(const std::vector<double>& logit, const std::vector<double>& shared, int64_t T, int64_t D,
                             bool gated) {
  std::vector<double> y(static_cast<size_t>(T * D));
  for (int64_t t = 0; t < T; ++t) {
    const double g = gated ? 1 / (1 + std::exp(-logit[size_t(t)])) : 1.0;
    for (int64_t i = 0; i < D; ++i) y[size_t(t * D + i)] = g * shared[size_t(t * D + i)];
  }
  return y;
}
}  // namespace

TEST(Gate, SharedExpertGate) {
  OpRow row("shared_gate", "fwd", On::Cpu);
  Rng rng(29);
  for (bool gated : {true, false})
    for (auto [T, D] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 17}, {17, 127}, {300, 256}}) {
      auto logit = randn(size_t(T), rng, 3.0), shared = randn(size_t(T * D), rng), y0 = randn(size_t(T * D), rng);
      Guarded<float> gate(size_t(T), qnan()), y(y0);
      k::shared_gate_forward(gated ? logit.data() : nullptr, shared.data(), T, D, gate.data(), y.data());
      auto want = gate_ref(widen(logit), widen(shared), T, D, gated);
      for (size_t i = 0; i < want.size(); ++i) want[i] += y0[i];
      std::vector<double> want_gate;
      want_gate.reserve(logit.size());
      for (float l : logit) want_gate.push_back(gated ? 1 / (1 + std::exp(-double(l))) : 1.0);
      expect_close("shared_gate y " + dims(T, D), y, want, kTolF32);
      expect_close("shared_gate gate " + dims(T, D), gate, want_gate, kTolF32);
    }
}

TEST(Gate, SharedExpertGateBackward) {
  OpRow row("shared_gate", "bwd (fd)", On::Cpu);
  Rng rng(30);
  for (auto [T, D] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 17}, {5, 8}}) {
    auto logit = randn(size_t(T), rng, 2.0), shared = randn(size_t(T * D), rng), dy = randn(size_t(T * D), rng);
    std::vector<float> gate(static_cast<size_t>(T)), scratch(static_cast<size_t>(T * D), 0.0f);
    k::shared_gate_forward(logit.data(), shared.data(), T, D, gate.data(), scratch.data());
    Guarded<float> dshared(size_t(T * D), qnan()), dlogit(size_t(T), qnan());
    k::shared_gate_backward(dy.data(), shared.data(), gate.data(), T, D, dshared.data(), dlogit.data());
    EXPECT_TRUE(dshared.intact() && dlogit.intact());
    const auto r = widen(dy), ld = widen(logit), sd = widen(shared);
    expect_fd(
        "shared_gate dlogit " + dims(T, D),
        [&, T = T, D = D](const std::vector<double>& v) { return dotv(r, gate_ref(v, sd, T, D, true)); }, ld,
        dlogit.vec());
    expect_fd(
        "shared_gate dshared " + dims(T, D),
        [&, T = T, D = D](const std::vector<double>& v) { return dotv(r, gate_ref(ld, v, T, D, true)); }, sd,
        dshared.vec());
  }
}

TEST(Optimizer, AdamW) {
  OpRow row("adamw_update", "fwd", On::Cpu);
  Rng rng(31);
  const double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, wd = 0.1, lr = 3e-3;
  for (size_t n : {size_t(1), size_t(17), size_t(127), size_t(70001)})
    for (int64_t step : {1, 7})
      for (bool decay : {true, false}) {
        auto w = randn(n, rng), g = randn(n, rng), m = randn(n, rng, 0.1), v = randn(n, rng, 0.01);
        for (auto& x : v) x = std::fabs(x);
        const auto c = k::adamw_scalars(float(beta1), float(beta2), float(eps), float(wd), lr, step);
        // A dry run writes nothing.
        Guarded<float> W(w), M(m), V(v);
        k::adamw_update(c, W.data(), M.data(), V.data(), g.data(), n, decay, false);
        EXPECT_EQ(W.vec(), w);
        EXPECT_EQ(M.vec(), m);
        const auto mx = k::adamw_update(c, W.data(), M.data(), V.data(), g.data(), n, decay, true);
        std::vector<double> ww(n), wm(n), wv(n);
        double wmax = 0;
        for (size_t i = 0; i < n; ++i) {
          // torch's AdamW in double: decoupled decay, moments, bias corrections.
          const double gi = g[i];
          double wi = double(w[i]) * (decay ? 1 - lr * wd : 1.0);
          wm[i] = beta1 * m[i] + (1 - beta1) * gi;
          wv[i] = beta2 * v[i] + (1 - beta2) * gi * gi;
          const double bc1 = 1 - std::pow(beta1, double(step)), bc2 = 1 - std::pow(beta2, double(step));
          ww[i] = wi - lr / bc1 * wm[i] / (std::sqrt(wv[i]) / std::sqrt(bc2) + eps);
          wmax = std::max(wmax, std::fabs(ww[i]));
        }
        const std::string what = "adamw n=" + std::to_string(n) + " step " + std::to_string(step);
        expect_close(what + " w", W, ww, kTolF32);
        expect_close(what + " exp_avg", M, wm, kTolF32);
        expect_close(what + " exp_avg_sq", V, wv, kTolF32);
        EXPECT_NEAR(mx.w, wmax, 1e-5 * wmax) << what;
      }
  // A NaN gradient shows in the maxima.
  float w = 1, m = 0, v = 0, g = std::nanf("");
  const auto mx = k::adamw_update(k::adamw_scalars(0.9f, 0.95f, 1e-8f, 0, 1e-3, 1), &w, &m, &v, &g, 1, true, false);
  EXPECT_FALSE(std::isfinite(mx.w));
}

TEST(Optimizer, Sgd) {
  OpRow row("sgd_update", "fwd", On::Cpu);
  Rng rng(32);
  const double lr = 0.05, wd = 0.01;
  for (size_t n : {size_t(1), size_t(17), size_t(70001)})
    for (float mom : {0.0f, 0.9f}) {
      auto w = randn(n, rng), g = randn(n, rng), buf = randn(n, rng);
      Guarded<float> W(w), B(buf);
      k::sgd_update(lr, float(wd), mom, W.data(), mom > 0 ? B.data() : nullptr, g.data(), n, true, true);
      std::vector<double> ww(n), wb(n);
      for (size_t i = 0; i < n; ++i) {
        double d = double(g[i]) + wd * w[i];
        if (mom > 0) d = mom * double(buf[i]) + d;
        wb[i] = mom > 0 ? d : buf[i];
        ww[i] = w[i] - lr * d;
      }
      const std::string what = "sgd n=" + std::to_string(n) + " momentum " + std::to_string(mom);
      expect_close(what + " w", W, ww, kTolF32);
      expect_close(what + " buf", B, wb, kTolF32);
    }
}

TEST(Rows, GatherAndScatter) {
  OpRow row("gather_rows", "fwd", On::Cpu);
  Rng rng(33);
  for (auto [T, D] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {5, 3}, {130, 67}}) {
    auto x = randn(size_t(T * D), rng);
    std::vector<int64_t> rows;
    for (int64_t t = T - 1; t >= 0; t -= 2) rows.push_back(t);  // reversed, every other row
    const int64_t R = int64_t(rows.size());
    std::vector<double> want;
    for (int64_t r : rows)
      for (int64_t i = 0; i < D; ++i) want.push_back(x[size_t(r * D + i)]);
    Guarded<float> y(size_t(R * D), qnan()), back(size_t(T * D), 0.0f);
    ops::gather_rows(moe::Backend{}, x.data(), D, rows, y.data());
    ops::scatter_rows(moe::Backend{}, y.data(), D, rows, back.data());
    std::vector<double> want_back(static_cast<size_t>(T * D), 0.0);
    for (int64_t r : rows)
      for (int64_t i = 0; i < D; ++i) want_back[size_t(r * D + i)] = x[size_t(r * D + i)];
    expect_close("gather_rows " + dims(T, D), y, want, kExact);
    expect_close("scatter_rows " + dims(T, D), back, want_back, kExact);
  }
}

// CUDA twins through the ops facade on a CUDA Backend (AdamW and SGD, which have no facade op,
// through kernels/cuda directly), against the same references and tolerances.
TEST(MoeOpsCuda, EmbeddingGather) {
  CUDA_ROW("embedding_gather", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(121);
  for (DType dt : {DType::F32, DType::BF16, DType::F16})
    for (auto [T, V, D] :
         std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 1}, {3, 5, 17}, {17, 127, 33}, {300, 50, 256}}) {
      auto t32 = randn(size_t(V * D), rng);
      std::vector<uint16_t> t16(t32.size());
      if (dt != DType::F32) {
        convert_from_f32(t32.data(), t16.data(), dt, t32.size());
        convert_to_f32(t16.data(), dt, t32.data(), t32.size());
      }
      DeviceIn<float> table32(t32);
      DeviceIn<uint16_t> table16(t16);
      const Tensor table =
          Tensor::borrow({V, D}, dt, dt == DType::F32 ? static_cast<void*>(table32.get()) : table16.get(), nullptr);
      auto ids = random_ids(T, V, rng);
      DeviceIn<int32_t> dids(ids);
      std::vector<double> want;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < D; ++i) want.push_back(t32[size_t(ids[size_t(t)] * D + i)]);
      Guarded<float> out(size_t(T * D), qnan());
      DeviceOut<float> dout(out);
      ops::embedding_gather(gpu(), table, std::span<const int32_t>(dids.get(), ids.size()), dout.get());
      expect_close("cuda embedding_gather " + std::string(dtype_name(dt)) + dims(T, V, D), dout.fetch(), want, kExact);
    }
#endif
}

TEST(MoeOpsCuda, EmbeddingScatterAdd) {
  CUDA_ROW("embedding_gather", "bwd (fd)");
#ifdef MOE_HAVE_CUDA
  Rng rng(122);
  for (auto [T, V, D] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 1}, {7, 3, 5}, {17, 11, 9}}) {
    auto table = randn(size_t(V * D), rng), dout = randn(size_t(T * D), rng), d0 = randn(size_t(V * D), rng);
    auto ids = random_ids(T, V, rng);
    DeviceIn<float> DO(dout);
    DeviceIn<int32_t> I(ids);
    Guarded<float> dt(d0);
    DeviceOut<float> DT(dt);
    ops::embedding_scatter_add(gpu(), DO.get(), std::span<const int32_t>(I.get(), ids.size()), D, DT.get());
    EXPECT_TRUE(DT.fetch().intact());
    std::vector<float> g(d0.size());
    for (size_t i = 0; i < g.size(); ++i) g[i] = dt[i] - d0[i];
    const auto r = widen(dout);
    expect_fd(
        "cuda embedding_scatter_add " + dims(T, V, D),
        [&, T = T, D = D](const std::vector<double>& tb) {
          double s = 0;
          for (int64_t t = 0; t < T; ++t)
            for (int64_t i = 0; i < D; ++i) s += r[size_t(t * D + i)] * tb[size_t(ids[size_t(t)] * D + i)];
          return s;
        },
        widen(table), g);
  }
  // Repeated ids sum in token order: bitwise the serial loop.
  const int64_t T = 400, V = 7, D = 256;
  auto dout = randn(size_t(T * D), rng);
  auto ids = random_ids(T, V, rng);
  std::vector<float> serial(static_cast<size_t>(V * D), 0.0f);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < D; ++i) serial[size_t(ids[size_t(t)] * D + i)] += dout[size_t(t * D + i)];
  DeviceIn<float> DO(dout);
  DeviceIn<int32_t> I(ids);
  Guarded<float> dt(size_t(V * D), 0.0f);
  DeviceOut<float> DT(dt);
  ops::embedding_scatter_add(gpu(), DO.get(), std::span<const int32_t>(I.get(), ids.size()), D, DT.get());
  expect_close("cuda embedding_scatter_add token order", DT.fetch(), widen(serial), kExact);
#endif
}

TEST(MoeOpsCuda, GatherAndScatterRows) {
  CUDA_ROW("gather_rows", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(123);
  for (auto [T, D] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {5, 3}, {130, 67}}) {
    auto x = randn(size_t(T * D), rng);
    std::vector<int64_t> rows;
    for (int64_t t = T - 1; t >= 0; t -= 2) rows.push_back(t);
    const int64_t R = int64_t(rows.size());
    std::vector<double> want;
    for (int64_t r : rows)
      for (int64_t i = 0; i < D; ++i) want.push_back(x[size_t(r * D + i)]);
    std::vector<double> want_back(static_cast<size_t>(T * D), 0.0);
    for (int64_t r : rows)
      for (int64_t i = 0; i < D; ++i) want_back[size_t(r * D + i)] = x[size_t(r * D + i)];
    DeviceIn<float> X(x);
    DeviceIn<int64_t> RW(rows);
    Guarded<float> y(size_t(R * D), qnan()), back(size_t(T * D), 0.0f);
    DeviceOut<float> Y(y), B(back);
    ops::gather_rows(gpu(), X.get(), D, std::span<const int64_t>(RW.get(), rows.size()), Y.get());
    ops::scatter_rows(gpu(), Y.get(), D, std::span<const int64_t>(RW.get(), rows.size()), B.get());
    expect_close("cuda gather_rows " + dims(T, D), Y.fetch(), want, kExact);
    expect_close("cuda scatter_rows " + dims(T, D), B.fetch(), want_back, kExact);
  }
#endif
}

TEST(MoeOpsCuda, QkvSplit) {
  CUDA_ROW("qkv_split", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(124);
  for (auto [T, nh, ng, d] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
           {1, 1, 1, 1}, {3, 4, 2, 5}, {17, 6, 3, 16}, {5, 8, 8, 3}, {300, 16, 4, 32}}) {
    QkvRef L{nh, ng, d};
    auto qkv = randn(size_t(T * L.rows()), rng);
    DeviceIn<float> QKV(qkv);
    Guarded<float> q(size_t(T * nh * d), qnan()), kk(size_t(T * ng * d), qnan()), v(size_t(T * ng * d), qnan());
    DeviceOut<float> Q(q), KK(kk), VV(v);
    ops::qkv_split(gpu(), QKV.get(), T, nh, ng, d, Q.get(), KK.get(), VV.get());
    std::vector<double> wq, wk, wv;
    for (int64_t t = 0; t < T; ++t) {
      const float* r = qkv.data() + t * L.rows();
      for (int64_t h = 0; h < nh; ++h)
        for (int64_t i = 0; i < d; ++i) wq.push_back(r[L.q(h, i)]);
      for (int64_t g = 0; g < ng; ++g)
        for (int64_t i = 0; i < d; ++i) wk.push_back(r[L.k(g, i)]), wv.push_back(r[L.v(g, i)]);
    }
    const std::string s = dims(T, nh, ng) + " d=" + std::to_string(d);
    expect_close("cuda qkv_split q " + s, Q.fetch(), wq, kExact);
    expect_close("cuda qkv_split k " + s, KK.fetch(), wk, kExact);
    expect_close("cuda qkv_split v " + s, VV.fetch(), wv, kExact);
  }
#endif
}

TEST(MoeOpsCuda, QkvMerge) {
  CUDA_ROW("qkv_split", "bwd (fd)");
#ifdef MOE_HAVE_CUDA
  Rng rng(125);
  for (auto [T, nh, ng, d] :
       std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{{1, 1, 1, 1}, {3, 4, 2, 5}, {2, 6, 3, 4}}) {
    QkvRef L{nh, ng, d};
    auto qkv = randn(size_t(T * L.rows()), rng);
    auto dq = randn(size_t(T * nh * d), rng), dk = randn(size_t(T * ng * d), rng), dv = randn(size_t(T * ng * d), rng);
    DeviceIn<float> DQ(dq), DK(dk), DV(dv);
    Guarded<float> dqkv(size_t(T * L.rows()), qnan());
    DeviceOut<float> D(dqkv);
    ops::qkv_merge(gpu(), DQ.get(), DK.get(), DV.get(), T, nh, ng, d, D.get());
    EXPECT_TRUE(D.fetch().intact());
    expect_fd(
        "cuda qkv_merge " + dims(T, nh, ng),
        [&, T = T, nh = nh, d = d, ng = ng](const std::vector<double>& x) {
          double s = 0;
          for (int64_t t = 0; t < T; ++t) {
            const double* r = x.data() + t * L.rows();
            for (int64_t h = 0; h < nh; ++h)
              for (int64_t i = 0; i < d; ++i) s += dq[size_t((t * nh + h) * d + i)] * r[L.q(h, i)];
            for (int64_t g = 0; g < ng; ++g)
              for (int64_t i = 0; i < d; ++i)
                s += dk[size_t((t * ng + g) * d + i)] * r[L.k(g, i)] + dv[size_t((t * ng + g) * d + i)] * r[L.v(g, i)];
          }
          return s;
        },
        widen(qkv), dqkv.vec());
  }
#endif
}

TEST(MoeOpsCuda, PlanAndPermute) {
  OpRow plan_row("permute_plan", "fwd", On::Cuda);
  if (std::string why; !cuda_ready(&why)) plan_row.skip(why);
  CUDA_ROW("permute", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(126);
  for (const auto& s : kPermuteShapes) {
    RoutingCase c = routing_case(s.T, s.K, s.E, s.mode, rng);
    std::vector<int64_t> want_counts;
    int64_t pad_to = 0;
    if (s.pad) {
      ref_rows(c, 0, &want_counts);
      pad_to = *std::max_element(want_counts.begin(), want_counts.end()) + 1;
    }
    const std::vector<int64_t> want_rows = ref_rows(c, pad_to, &want_counts);
    const int64_t cap = k::permute_max_rows(s.T, s.K, s.E, pad_to);
    Guarded<int64_t> counts(size_t(s.E), -7), offsets(size_t(s.E), -7), slots(size_t(cap), -7);
    DeviceIn<int32_t> ex(c.expert);
    DeviceOut<int64_t> C(counts), O(offsets), S(slots);
    const int64_t R = ops::permute_plan(gpu(), ex.get(), s.T, s.K, s.E, pad_to, C.get(), O.get(), S.get());
    C.fetch(), O.fetch(), S.fetch();
    const std::string what =
        "cuda permute " + dims(s.T, s.K, s.E) + " mode " + std::to_string(s.mode) + (s.pad ? " padded" : "");
    EXPECT_TRUE(counts.intact() && offsets.intact() && slots.intact()) << what;
    ASSERT_EQ(R, int64_t(want_rows.size())) << what;
    EXPECT_EQ(counts.vec(), want_counts) << what;
    EXPECT_EQ(std::vector<int64_t>(slots.data(), slots.data() + R), want_rows) << what;
    int64_t off = 0;
    for (int64_t e = 0; e < s.E; ++e) {
      EXPECT_EQ(offsets[size_t(e)], off) << what << " expert " << e;
      off += pad_to > 0 ? pad_to : want_counts[size_t(e)];
    }
    const int64_t D = 1 + s.T % 13;
    auto x = randn(size_t(s.T * D), rng);
    DeviceIn<float> X(x);
    Guarded<float> xp(size_t(R * D), qnan());
    DeviceOut<float> XP(xp);
    ops::permute(gpu(), X.get(), D, S.get(), R, s.K, XP.get());
    std::vector<double> want;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t i = 0; i < D; ++i)
        want.push_back(want_rows[size_t(r)] < 0 ? 0.0 : x[size_t(want_rows[size_t(r)] / s.K * D + i)]);
    expect_close(what, XP.fetch(), want, kExact);
  }
  // An expert id out of range is refused, as on the CPU.
  std::vector<int32_t> bad = {0, 5};
  DeviceIn<int32_t> B(bad);
  DeviceIn<int64_t> scratch(std::vector<int64_t>(8));
  EXPECT_THROW(ops::permute_plan(gpu(), B.get(), 1, 2, 3, 0, scratch.get(), scratch.get() + 3, scratch.get() + 6),
               std::exception);
#endif
}

namespace {
// The routing and its row map on the device, for the CUDA rows of the permutation's backwards.
struct PlannedRouting {
  RoutingCase c;
  std::vector<int64_t> slots;
  int64_t R = 0;
  PlannedRouting(const PermuteShape& s, Rng& rng) : c(routing_case(s.T, s.K, s.E, s.mode, rng)) {
    std::vector<int64_t> counts(static_cast<size_t>(s.E)), offsets(static_cast<size_t>(s.E));
    const int64_t pad_to = s.pad ? s.T : 0;
    slots.resize(size_t(k::permute_max_rows(s.T, s.K, s.E, pad_to)));
    R = k::permute_plan(c.expert.data(), s.T, s.K, s.E, pad_to, counts.data(), offsets.data(), slots.data());
    slots.resize(size_t(R));
  }
};
}  // namespace

TEST(MoeOpsCuda, PermuteBackwardAdd) {
  CUDA_ROW("permute", "bwd (fd)");
#ifdef MOE_HAVE_CUDA
  Rng rng(127);
  for (const auto& s : kPermuteShapes) {
    if (s.T > 20) continue;
    PlannedRouting p(s, rng);
    const int64_t D = 3, R = p.R;
    auto x = randn(size_t(s.T * D), rng), dxp = randn(size_t(R * D), rng), d0 = randn(size_t(s.T * D), rng);
    DeviceIn<float> DXP(dxp);
    DeviceIn<int64_t> SL(p.slots);
    Guarded<float> dx(d0);
    DeviceOut<float> DX(dx);
    ops::permute_backward_add(gpu(), DXP.get(), D, SL.get(), R, s.K, DX.get());
    EXPECT_TRUE(DX.fetch().intact());
    std::vector<float> g(d0.size());
    for (size_t i = 0; i < g.size(); ++i) g[i] = dx[i] - d0[i];
    expect_fd(
        "cuda permute_backward_add " + dims(s.T, s.K, s.E),
        [&](const std::vector<double>& xv) {
          double sum = 0;
          for (int64_t r = 0; r < R; ++r)
            if (p.slots[size_t(r)] >= 0)
              for (int64_t i = 0; i < D; ++i)
                sum += dxp[size_t(r * D + i)] * xv[size_t(p.slots[size_t(r)] / s.K * D + i)];
          return sum;
        },
        widen(x), g);
  }
#endif
}

TEST(MoeOpsCuda, UnpermuteAdd) {
  CUDA_ROW("unpermute_add", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(128);
  for (const auto& s : kPermuteShapes) {
    PlannedRouting p(s, rng);
    const int64_t R = p.R, D = s.T > 100 ? 400 : 1 + s.T % 13;
    auto y = randn(size_t(R * D), rng), out0 = randn(size_t(s.T * D), rng);
    DeviceIn<float> Y(y), W(p.c.weight);
    DeviceIn<int64_t> SL(p.slots);
    Guarded<float> out(out0);
    DeviceOut<float> O(out);
    ops::unpermute_add(gpu(), Y.get(), D, SL.get(), R, s.K, W.get(), O.get());
    auto want = unpermute_ref(widen(y), widen(p.c.weight), p.slots, R, s.K, s.T, D);
    for (size_t i = 0; i < want.size(); ++i) want[i] += out0[i];
    expect_close("cuda unpermute_add " + dims(s.T, s.K, s.E), O.fetch(), want, kTolF32);
  }
#endif
}

TEST(MoeOpsCuda, UnpermuteAddBackward) {
  CUDA_ROW("unpermute_add", "bwd (fd)");
#ifdef MOE_HAVE_CUDA
  Rng rng(129);
  for (const auto& s : kPermuteShapes) {
    if (s.T > 20) continue;
    PlannedRouting p(s, rng);
    const int64_t R = p.R, D = 4;
    auto y = randn(size_t(R * D), rng), dout = randn(size_t(s.T * D), rng);
    DeviceIn<float> Y(y), DO(dout), W(p.c.weight);
    DeviceIn<int64_t> SL(p.slots);
    Guarded<float> dy(size_t(R * D), qnan()), dw(size_t(s.T * s.K), qnan());
    DeviceOut<float> DY(dy), DW(dw);
    ops::unpermute_add_backward(gpu(), DO.get(), Y.get(), D, SL.get(), R, s.T, s.K, W.get(), DY.get(), DW.get());
    DY.fetch(), DW.fetch();
    EXPECT_TRUE(dy.intact() && dw.intact());
    const auto r = widen(dout), yd = widen(y), wd = widen(p.c.weight);
    const std::string what = "cuda unpermute_add_backward " + dims(s.T, s.K, s.E);
    expect_fd(
        what + " dy",
        [&](const std::vector<double>& v) { return dotv(r, unpermute_ref(v, wd, p.slots, R, s.K, s.T, D)); }, yd,
        dy.vec());
    expect_fd(
        what + " dweight",
        [&](const std::vector<double>& v) { return dotv(r, unpermute_ref(yd, v, p.slots, R, s.K, s.T, D)); }, wd,
        dw.vec());
  }
#endif
}

TEST(MoeOpsCuda, SharedExpertGate) {
  CUDA_ROW("shared_gate", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(130);
  for (bool gated : {true, false})
    for (auto [T, D] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 17}, {17, 127}, {300, 256}}) {
      auto logit = randn(size_t(T), rng, 3.0), shared = randn(size_t(T * D), rng), y0 = randn(size_t(T * D), rng);
      DeviceIn<float> L(logit), S(shared);
      Guarded<float> gate(size_t(T), qnan()), y(y0);
      DeviceOut<float> G(gate), Y(y);
      ops::shared_gate(gpu(), gated ? L.get() : nullptr, S.get(), T, D, G.get(), Y.get());
      auto want = gate_ref(widen(logit), widen(shared), T, D, gated);
      for (size_t i = 0; i < want.size(); ++i) want[i] += y0[i];
      std::vector<double> want_gate;
      want_gate.reserve(logit.size());
      for (float l : logit) want_gate.push_back(gated ? 1 / (1 + std::exp(-double(l))) : 1.0);
      expect_close("cuda shared_gate y " + dims(T, D), Y.fetch(), want, kTolF32);
      expect_close("cuda shared_gate gate " + dims(T, D), G.fetch(), want_gate, kTolF32);
    }
#endif
}

TEST(MoeOpsCuda, SharedExpertGateBackward) {
  CUDA_ROW("shared_gate", "bwd (fd)");
#ifdef MOE_HAVE_CUDA
  Rng rng(131);
  for (auto [T, D] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 17}, {5, 8}}) {
    auto logit = randn(size_t(T), rng, 2.0), shared = randn(size_t(T * D), rng), dy = randn(size_t(T * D), rng);
    std::vector<float> gate(static_cast<size_t>(T)), scratch(static_cast<size_t>(T * D), 0.0f);
    k::shared_gate_forward(logit.data(), shared.data(), T, D, gate.data(), scratch.data());
    DeviceIn<float> DY(dy), S(shared), G(gate);
    Guarded<float> dshared(size_t(T * D), qnan()), dlogit(size_t(T), qnan());
    DeviceOut<float> DS(dshared), DL(dlogit);
    ops::shared_gate_backward(gpu(), DY.get(), S.get(), G.get(), T, D, DS.get(), DL.get());
    DS.fetch(), DL.fetch();
    EXPECT_TRUE(dshared.intact() && dlogit.intact());
    const auto r = widen(dy), ld = widen(logit), sd = widen(shared);
    expect_fd(
        "cuda shared_gate dlogit " + dims(T, D),
        [&, T = T, D = D](const std::vector<double>& v) { return dotv(r, gate_ref(v, sd, T, D, true)); }, ld,
        dlogit.vec());
    expect_fd(
        "cuda shared_gate dshared " + dims(T, D),
        [&, T = T, D = D](const std::vector<double>& v) { return dotv(r, gate_ref(ld, v, T, D, true)); }, sd,
        dshared.vec());
  }
#endif
}

TEST(MoeOpsCuda, AdamW) {
  CUDA_ROW("adamw_update", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(132);
  const double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, wd = 0.1, lr = 3e-3;
  for (size_t n : {size_t(1), size_t(17), size_t(127), size_t(70001), size_t(300001)})
    for (int64_t step : {1, 7})
      for (bool decay : {true, false}) {
        auto w = randn(n, rng), g = randn(n, rng), m = randn(n, rng, 0.1), v = randn(n, rng, 0.01);
        for (auto& x : v) x = std::fabs(x);
        const auto c = k::adamw_scalars(float(beta1), float(beta2), float(eps), float(wd), lr, step);
        Guarded<float> W(w), M(m), V(v);
        DeviceOut<float> dW(W), dM(M), dV(V);
        DeviceIn<float> dG(g);
        kernels::cuda::adamw_update(c, dW.get(), dM.get(), dV.get(), dG.get(), n, decay, false);  // dry run
        EXPECT_EQ(dW.fetch().vec(), w);
        EXPECT_EQ(dM.fetch().vec(), m);
        const auto mx = kernels::cuda::adamw_update(c, dW.get(), dM.get(), dV.get(), dG.get(), n, decay, true);
        std::vector<double> ww(n), wm(n), wv(n);
        double wmax = 0;
        for (size_t i = 0; i < n; ++i) {
          const double gi = g[i];
          double wi = double(w[i]) * (decay ? 1 - lr * wd : 1.0);
          wm[i] = beta1 * m[i] + (1 - beta1) * gi;
          wv[i] = beta2 * v[i] + (1 - beta2) * gi * gi;
          const double bc1 = 1 - std::pow(beta1, double(step)), bc2 = 1 - std::pow(beta2, double(step));
          ww[i] = wi - lr / bc1 * wm[i] / (std::sqrt(wv[i]) / std::sqrt(bc2) + eps);
          wmax = std::max(wmax, std::fabs(ww[i]));
        }
        const std::string what = "cuda adamw n=" + std::to_string(n) + " step " + std::to_string(step);
        expect_close(what + " w", dW.fetch(), ww, kTolF32);
        expect_close(what + " exp_avg", dM.fetch(), wm, kTolF32);
        expect_close(what + " exp_avg_sq", dV.fetch(), wv, kTolF32);
        EXPECT_NEAR(mx.w, wmax, 1e-5 * wmax) << what;
      }
  std::vector<float> one = {1.0f}, zero = {0.0f}, nan = {std::nanf("")};
  DeviceIn<float> w(one), m(zero), v(zero), g(nan);
  const auto mx = kernels::cuda::adamw_update(k::adamw_scalars(0.9f, 0.95f, 1e-8f, 0, 1e-3, 1), w.get(), m.get(),
                                              v.get(), g.get(), 1, true, false);
  EXPECT_FALSE(std::isfinite(mx.w));
#endif
}

TEST(MoeOpsCuda, Sgd) {
  CUDA_ROW("sgd_update", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(133);
  const double lr = 0.05, wd = 0.01;
  for (size_t n : {size_t(1), size_t(17), size_t(70001)})
    for (float mom : {0.0f, 0.9f}) {
      auto w = randn(n, rng), g = randn(n, rng), buf = randn(n, rng);
      Guarded<float> W(w), B(buf);
      DeviceOut<float> dW(W), dB(B);
      DeviceIn<float> dG(g);
      kernels::cuda::sgd_update(lr, float(wd), mom, dW.get(), mom > 0 ? dB.get() : nullptr, dG.get(), n, true, true);
      std::vector<double> ww(n), wb(n);
      for (size_t i = 0; i < n; ++i) {
        double d = double(g[i]) + wd * w[i];
        if (mom > 0) d = mom * double(buf[i]) + d;
        wb[i] = mom > 0 ? d : buf[i];
        ww[i] = w[i] - lr * d;
      }
      const std::string what = "cuda sgd n=" + std::to_string(n) + " momentum " + std::to_string(mom);
      expect_close(what + " w", dW.fetch(), ww, kTolF32);
      expect_close(what + " buf", dB.fetch(), wb, kTolF32);
    }
#endif
}
