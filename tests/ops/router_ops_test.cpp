// The router's maths (kernels/cpu/router.h) against a double-precision reference written here:
// softmax / sigmoid scores, top-k with the lower-id tie rule, expert bias for selection only,
// capacity drops, the balancing losses and the z-loss, and finite-difference checks of every
// backward to the logits.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/cpu/router.h"
#include "kernels/ops.h"
#include "ops/device.h"
#include "ops/harness.h"

using namespace moe;
using namespace moe::ops_test;
namespace k = moe::kernels::cpu;
using k::LoadBalancing;
using k::RouterOptions;
using k::RouterScore;
// Lambdas capture loop bindings by copy ([&, T = T]): clang before 16, whose clang-tidy lints
// this code, cannot capture structured bindings.

namespace {

struct RefRouting {
  std::vector<int32_t> selected, kept;
  std::vector<double> weight;  // after dropping
  std::vector<double> probs;   // the losses' input
  std::vector<int64_t> load;
  double aux = 0, z = 0;
};

double sigm(double x) { return 1 / (1 + std::exp(-x)); }

RefRouting ref_route(const RouterOptions& o, const std::vector<double>& l, int64_t T, const std::vector<float>* bias,
                     const std::vector<int32_t>& cu) {
  const int64_t E = o.E, K = o.K;
  RefRouting r;
  r.probs.resize(size_t(T * E));
  std::vector<double> lse(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    const double* lt = l.data() + t * E;
    double* p = r.probs.data() + t * E;
    const double m = *std::max_element(lt, lt + E);
    double s = 0;
    for (int64_t e = 0; e < E; ++e) s += std::exp(lt[e] - m);
    lse[size_t(t)] = m + std::log(s);
    double ss = 0;
    for (int64_t e = 0; e < E; ++e) ss += sigm(lt[e]);
    for (int64_t e = 0; e < E; ++e)
      p[e] = o.score == RouterScore::Softmax ? std::exp(lt[e] - lse[size_t(t)]) : sigm(lt[e]) / (ss + 1e-20);
    std::vector<double> score(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) {
      const double base = o.score == RouterScore::Sigmoid ? sigm(lt[e]) : (bias && o.pre_softmax ? p[e] : lt[e]);
      score[size_t(e)] = base + (bias ? (*bias)[size_t(e)] : 0.0);
    }
    std::vector<int32_t> idx(static_cast<size_t>(E));
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return score[size_t(a)] > score[size_t(b)]; });
    double z = 0;
    for (int64_t kk = 0; kk < K; ++kk)
      z += o.score == RouterScore::Sigmoid ? sigm(lt[idx[size_t(kk)]]) : std::exp(lt[idx[size_t(kk)]] - m);
    for (int64_t kk = 0; kk < K; ++kk) {
      const int32_t e = idx[size_t(kk)];
      r.selected.push_back(e);
      if (o.score == RouterScore::Sigmoid) r.weight.push_back(K > 1 ? sigm(lt[e]) / (z + 1e-20) : sigm(lt[e]));
      else r.weight.push_back(o.pre_softmax ? p[e] : std::exp(lt[e] - m) / z);
    }
  }
  r.kept = r.selected;
  if (o.capacity > 0)
    for (int64_t e = 0; e < E; ++e) {
      std::vector<size_t> pairs;
      for (size_t i = 0; i < r.kept.size(); ++i)
        if (r.kept[i] == e) pairs.push_back(i);
      if (o.drop_by_probs)
        std::stable_sort(pairs.begin(), pairs.end(), [&](size_t a, size_t b) { return r.weight[a] > r.weight[b]; });
      for (size_t j = size_t(o.capacity); j < pairs.size(); ++j) r.kept[pairs[j]] = -1, r.weight[pairs[j]] = 0;
    }
  r.load.assign(size_t(E), 0);
  for (int32_t e : r.kept)
    if (e >= 0) ++r.load[size_t(e)];
  if (o.aux_loss_coeff > 0 && o.balancing == LoadBalancing::AuxLoss) {
    double s = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e) s += r.probs[size_t(t * E + e)] * double(r.load[size_t(e)]);
    r.aux = o.aux_loss_coeff * double(E) / (double(K) * double(T) * double(T)) * s;
  } else if (o.aux_loss_coeff > 0 && o.balancing == LoadBalancing::SeqAuxLoss) {
    const int64_t S = int64_t(cu.size()) - 1;
    for (int64_t q = 0; q < S; ++q) {
      const int64_t t0 = cu[size_t(q)], t1 = cu[size_t(q) + 1], L = t1 - t0;
      for (int64_t e = 0; e < E; ++e) {
        double load = 0, pe = 0;
        for (int64_t t = t0; t < t1; ++t) {
          pe += r.probs[size_t(t * E + e)];
          for (int64_t kk = 0; kk < K; ++kk) load += r.kept[size_t(t * K + kk)] == e;
        }
        if (L > 0) r.aux += o.aux_loss_coeff / double(S) * load * double(E) / double(L * K) * pe / double(L);
      }
    }
  }
  if (o.z_loss_coeff > 0) {
    for (double v : lse) r.z += v * v;
    r.z *= o.z_loss_coeff / double(T);
  }
  return r;
}

struct RouterCase {
  std::string name;
  RouterOptions o;
  bool bias;
};

std::vector<RouterCase> router_cases(int64_t T, int64_t E, int64_t K) {
  auto opt = [&](RouterScore s, bool pre) {
    RouterOptions o;
    o.E = E, o.K = K, o.score = s, o.pre_softmax = pre;
    return o;
  };
  std::vector<RouterCase> c = {{"softmax pre", opt(RouterScore::Softmax, true), false},
                               {"softmax topk-then-softmax", opt(RouterScore::Softmax, false), false},
                               {"softmax pre + bias", opt(RouterScore::Softmax, true), true},
                               {"softmax post + bias", opt(RouterScore::Softmax, false), true},
                               {"sigmoid + bias", opt(RouterScore::Sigmoid, false), true},
                               {"sigmoid", opt(RouterScore::Sigmoid, false), false}};
  // Losses and drops on top of the routing.
  RouterOptions a = opt(RouterScore::Softmax, false);
  a.balancing = LoadBalancing::AuxLoss, a.aux_loss_coeff = 0.01, a.z_loss_coeff = 0.001;
  a.capacity = k::router_capacity(T, E, K, 1.0);
  c.push_back({"softmax aux+z+capacity(probs)", a, false});
  RouterOptions b = opt(RouterScore::Softmax, true);
  b.balancing = LoadBalancing::SeqAuxLoss, b.aux_loss_coeff = 0.1, b.capacity = k::router_capacity(T, E, K, 1.2);
  b.drop_by_probs = false;
  c.push_back({"softmax pre seq_aux+capacity(position)", b, true});
  RouterOptions s = opt(RouterScore::Sigmoid, false);
  s.balancing = LoadBalancing::AuxLoss, s.aux_loss_coeff = 0.01, s.z_loss_coeff = 0.001;
  s.capacity = k::router_capacity(T, E, K, 1.0);
  c.push_back({"sigmoid aux+z+capacity", s, true});
  return c;
}

const std::vector<std::tuple<int64_t, int64_t, int64_t>> kRouterShapes = {
    {1, 1, 1}, {3, 5, 2}, {17, 8, 3}, {127, 16, 4}};

std::vector<int32_t> seqs(int64_t T) {
  std::vector<int32_t> cu = {0};
  if (T > 2) cu.push_back(int32_t(T / 3));
  cu.push_back(int32_t(T));
  return cu;
}

std::string dims(int64_t T, int64_t E, int64_t K) {
  return "[T=" + std::to_string(T) + ",E=" + std::to_string(E) + ",K=" + std::to_string(K) + "]";
}

}  // namespace

TEST(Router, Softmax) {
  OpRow row("router_softmax", "fwd", On::Cpu);
  Rng rng(41);
  for (auto [T, E, K] : kRouterShapes) {
    auto l = randn(size_t(T * E), rng, 3.0);
    Guarded<float> p(size_t(T * E), qnan());
    Guarded<double> lse(size_t(T), std::nan(""));
    k::router_softmax(l.data(), T, E, p.data(), lse.data());
    RouterOptions o;
    o.E = E, o.K = K;
    o.z_loss_coeff = 1;
    const RefRouting r = ref_route(o, widen(l), T, nullptr, {});
    expect_close("router_softmax " + dims(T, E, K), p, r.probs, kTolF32);
    EXPECT_TRUE(lse.intact());
    double z = 0;
    for (size_t t = 0; t < size_t(T); ++t) z += lse[t] * lse[t];
    EXPECT_NEAR(z / double(T), r.z, 1e-9 * (1 + r.z));
  }
}

TEST(Router, TopK) {
  OpRow row("router_topk", "fwd", On::Cpu);
  Rng rng(42);
  for (auto [T, E, K] : kRouterShapes)
    for (const auto& c : router_cases(T, E, K))
      for (bool ties : {false, true}) {
        if (ties && c.bias) continue;  // ties are exact in float only without the bias sum
        auto l = randn(size_t(T * E), rng, 2.0);
        if (ties)
          for (auto& x : l) x = std::round(x * 2) / 2;  // many equal logits: the tie rule decides
        auto bias = randn(size_t(E), rng, 0.5);
        Guarded<int32_t> ex(size_t(T * K), -9);
        Guarded<float> wt(size_t(T * K), qnan());
        k::router_topk(c.o, l.data(), T, c.bias ? bias.data() : nullptr, ex.data(), wt.data());
        const RefRouting r = ref_route(c.o, widen(l), T, c.bias ? &bias : nullptr, {});
        const std::string what = "router_topk " + c.name + dims(T, E, K) + (ties ? " ties" : "");
        EXPECT_TRUE(ex.intact()) << what;
        EXPECT_EQ(ex.vec(), r.selected) << what;
        // Weights before dropping: recompute the reference without capacity.
        RouterOptions o = c.o;
        o.capacity = 0;
        expect_close(what, wt, ref_route(o, widen(l), T, c.bias ? &bias : nullptr, {}).weight, kTolF32);
      }
}

TEST(Router, DropOverCapacity) {
  OpRow row("router_drop_over_capacity", "fwd", On::Cpu);
  Rng rng(43);
  for (auto [T, E, K] : kRouterShapes)
    for (bool by_probs : {true, false})
      for (double factor : {0.5, 1.0}) {
        RouterOptions o;
        o.E = E, o.K = K, o.capacity = k::router_capacity(T, E, K, factor), o.drop_by_probs = by_probs;
        auto l = randn(size_t(T * E), rng, 2.0);
        Guarded<int32_t> ex(size_t(T * K), -9);
        Guarded<float> wt(size_t(T * K), qnan());
        k::router_topk(o, l.data(), T, nullptr, ex.data(), wt.data());
        k::router_drop_over_capacity(ex.data(), wt.data(), T, K, E, o.capacity, by_probs);
        const RefRouting r = ref_route(o, widen(l), T, nullptr, {});
        const std::string what = "drop " + dims(T, E, K) + " cap " + std::to_string(o.capacity);
        EXPECT_TRUE(ex.intact() && wt.intact()) << what;
        EXPECT_EQ(ex.vec(), r.kept) << what;
        expect_close(what, wt, r.weight, kTolF32);
        Guarded<int64_t> load(size_t(E), -9);
        k::router_tokens_per_expert(ex.data(), T, K, E, load.data());
        EXPECT_TRUE(load.intact());
        EXPECT_EQ(load.vec(), r.load) << what;
      }
}

TEST(Router, AuxLosses) {
  OpRow fwd("router_aux_loss", "fwd", On::Cpu);
  Rng rng(44);
  for (auto [T, E, K] : kRouterShapes)
    for (LoadBalancing lb : {LoadBalancing::AuxLoss, LoadBalancing::SeqAuxLoss}) {
      OpRow row(lb == LoadBalancing::AuxLoss ? "router_aux_loss" : "router_seq_aux_loss", "fwd", On::Cpu);
      RouterOptions o;
      o.E = E, o.K = K, o.balancing = lb, o.aux_loss_coeff = 0.1;
      const auto cu = seqs(T);
      auto l = randn(size_t(T * E), rng, 2.0);
      std::vector<float> p(static_cast<size_t>(T * E)), wt(static_cast<size_t>(T * K));
      std::vector<int32_t> ex(static_cast<size_t>(T * K));
      std::vector<int64_t> load(static_cast<size_t>(E));
      k::router_softmax(l.data(), T, E, p.data(), nullptr);
      k::router_topk(o, l.data(), T, nullptr, ex.data(), wt.data());
      k::router_tokens_per_expert(ex.data(), T, K, E, load.data());
      const RefRouting r = ref_route(o, widen(l), T, nullptr, cu);
      const int64_t S = int64_t(cu.size()) - 1;
      std::vector<double> seq_load(static_cast<size_t>(S * E));
      k::router_seq_loads(ex.data(), T, K, E, cu.data(), S, 0, seq_load.data());
      const double got = lb == LoadBalancing::AuxLoss
                             ? k::router_aux_loss(p.data(), load.data(), T, T, E, K, 0.1)
                             : k::router_seq_aux_loss(p.data(), seq_load.data(), cu.data(), S, 0, T, E, K, 0.1);
      EXPECT_NEAR(got, r.aux, 1e-6 * std::fabs(r.aux) + 1e-12) << dims(T, E, K);
    }
}

TEST(Router, AuxLossBackwards) {
  Rng rng(45);
  for (auto [T, E, K] : kRouterShapes) {
    if (T > 20) continue;
    const auto cu = seqs(T);
    const int64_t S = int64_t(cu.size()) - 1;
    auto l = randn(size_t(T * E), rng, 2.0);
    std::vector<float> p(static_cast<size_t>(T * E)), wt(static_cast<size_t>(T * K));
    std::vector<int32_t> ex(static_cast<size_t>(T * K));
    std::vector<int64_t> load(static_cast<size_t>(E));
    RouterOptions o;
    o.E = E, o.K = K;
    k::router_softmax(l.data(), T, E, p.data(), nullptr);
    k::router_topk(o, l.data(), T, nullptr, ex.data(), wt.data());
    k::router_tokens_per_expert(ex.data(), T, K, E, load.data());
    std::vector<double> seq_load(static_cast<size_t>(S * E));
    k::router_seq_loads(ex.data(), T, K, E, cu.data(), S, 0, seq_load.data());
    for (bool seq : {false, true}) {
      OpRow row(seq ? "router_seq_aux_loss" : "router_aux_loss", "bwd (fd)", On::Cpu);
      std::vector<double> dp(static_cast<size_t>(T * E), 0.0);
      if (seq) k::router_seq_aux_loss_backward(seq_load.data(), cu.data(), S, 0, T, E, K, 0.1, 2.0, dp.data());
      else k::router_aux_loss_backward(load.data(), T, T, E, K, 0.1, 2.0, dp.data());
      std::vector<float> g(dp.begin(), dp.end());
      expect_fd(
          std::string(seq ? "seq_aux" : "aux") + dims(T, E, K),
          [&, T = T, E = E, K = K](const std::vector<double>& pv) {
            // The loss is linear in p with the loads fixed: evaluate it in double.
            double s = 0;
            if (!seq) {
              for (int64_t t = 0; t < T; ++t)
                for (int64_t e = 0; e < E; ++e) s += pv[size_t(t * E + e)] * double(load[size_t(e)]);
              return 2.0 * 0.1 * double(E) / (double(K) * double(T) * double(T)) * s;
            }
            for (int64_t q = 0; q < S; ++q) {
              const int64_t t0 = cu[size_t(q)], t1 = cu[size_t(q) + 1], L = t1 - t0;
              for (int64_t t = t0; t < t1; ++t)
                for (int64_t kk = 0; kk < K; ++kk)
                  for (int64_t u = t0; u < t1; ++u)
                    s += pv[size_t(u * E + ex[size_t(t * K + kk)])] * double(E) / double(L * K) / double(L);
            }
            return 2.0 * 0.1 / double(S) * s;
          },
          widen(p), g);
    }
    OpRow zrow("router_z_loss", "bwd (fd)", On::Cpu);
    Guarded<float> dl(size_t(T * E), 0.0f);
    k::router_z_loss_backward(l.data(), T, T, E, 0.01, 3.0, dl.data());
    EXPECT_TRUE(dl.intact());
    RouterOptions oz;
    oz.E = E, oz.K = K, oz.z_loss_coeff = 0.01;
    expect_fd(
        "z_loss" + dims(T, E, K),
        [&, T = T](const std::vector<double>& lv) { return 3.0 * ref_route(oz, lv, T, nullptr, {}).z; }, widen(l),
        dl.vec());
  }
}

TEST(Router, ZLoss) {
  OpRow row("router_z_loss", "fwd", On::Cpu);
  Rng rng(46);
  for (auto [T, E, K] : kRouterShapes) {
    auto l = randn(size_t(T * E), rng, 4.0);
    std::vector<float> p(static_cast<size_t>(T * E));
    std::vector<double> lse(static_cast<size_t>(T));
    k::router_softmax(l.data(), T, E, p.data(), lse.data());
    RouterOptions o;
    o.E = E, o.K = K, o.z_loss_coeff = 0.01;
    const double want = ref_route(o, widen(l), T, nullptr, {}).z;
    EXPECT_NEAR(k::router_z_loss(lse.data(), T, T, 0.01), want, 1e-6 * want) << dims(T, E, K);
  }
}

// The whole router, forward against the reference and backward against finite differences of
// L = sum_k dweight_k weight_k + scale (aux + z).
TEST(Router, ForwardAndBackward) {
  Rng rng(47);
  for (auto [T, E, K] : kRouterShapes)
    for (const auto& c : router_cases(T, E, K)) {
      const auto cu = seqs(T);
      const int64_t S = int64_t(cu.size()) - 1;
      auto l = randn(size_t(T * E), rng, 2.0), bias = randn(size_t(E), rng, 0.3), dw = randn(size_t(T * K), rng);
      const std::vector<float>* b = c.bias ? &bias : nullptr;
      Guarded<float> probs(size_t(T * E), qnan()), sw(size_t(T * K), qnan()), wt(size_t(T * K), qnan());
      Guarded<int32_t> sel(size_t(T * K), -9), ex(size_t(T * K), -9);
      Guarded<int64_t> load(size_t(E), -9);
      const std::string what = "router " + c.name + dims(T, E, K);
      {
        OpRow row("router_forward", "fwd", On::Cpu);
        const auto losses = k::router_forward(c.o, l.data(), T, c.bias ? bias.data() : nullptr, cu.data(), S,
                                              probs.data(), sel.data(), sw.data(), ex.data(), wt.data(), load.data());
        const RefRouting r = ref_route(c.o, widen(l), T, b, cu);
        EXPECT_TRUE(sel.intact() && ex.intact() && load.intact()) << what;
        EXPECT_EQ(sel.vec(), r.selected) << what;
        EXPECT_EQ(ex.vec(), r.kept) << what;
        EXPECT_EQ(load.vec(), r.load) << what;
        expect_close(what + " probs", probs, r.probs, kTolF32);
        expect_close(what + " weights", wt, r.weight, kTolF32);
        EXPECT_NEAR(losses.aux_loss, r.aux, 1e-6 * r.aux + 1e-12) << what;
        EXPECT_NEAR(losses.z_loss, r.z, 1e-6 * r.z + 1e-12) << what;
      }
      if (T > 20) continue;
      OpRow row("router_forward", "bwd (fd)", On::Cpu);
      const float scale = 1.5f;
      Guarded<float> dl(size_t(T * E), qnan());
      std::vector<double> seq_load(static_cast<size_t>(S * E));
      k::router_seq_loads(ex.data(), T, K, E, cu.data(), S, 0, seq_load.data());
      k::router_backward(c.o, l.data(), T, cu.data(), S, probs.data(), sel.data(), sw.data(), ex.data(), load.data(),
                         seq_load.data(), dw.data(), scale, dl.data());
      EXPECT_TRUE(dl.intact()) << what;
      const auto dwd = widen(dw);
      expect_fd(
          what,
          [&, T = T](const std::vector<double>& lv) {
            const RefRouting r = ref_route(c.o, lv, T, b, cu);
            return dotv(dwd, r.weight) + scale * (r.aux + r.z);
          },
          widen(l), dl.vec());
    }
}

// Sequence parallelism under expert-parallel folding: each rank routes its share of a
// micro-batch's rows, the loads are summed over the ranks, and the shares' losses add up to the
// whole micro-batch's while each share's gradient is the whole's on its rows.
TEST(Router, RowSharesAddUpToTheWhole) {
  Rng rng(48);
  for (auto [T, E, K] : kRouterShapes)
    for (const auto& c : router_cases(T, E, K)) {
      if (c.o.capacity > 0 || T > 20) continue;  // a capacity is per share (as Megatron's per rank)
      RouterOptions o = c.o;
      o.aux_loss_coeff = o.aux_loss_coeff > 0 ? o.aux_loss_coeff : 0.05, o.z_loss_coeff = 0.002;
      if (o.balancing == LoadBalancing::None) o.balancing = LoadBalancing::SeqAuxLoss;
      const auto cu = seqs(T);
      const int64_t S = int64_t(cu.size()) - 1;
      auto l = randn(size_t(T * E), rng, 2.0), bias = randn(size_t(E), rng, 0.3), dw = randn(size_t(T * K), rng);
      const float* b = c.bias ? bias.data() : nullptr;
      std::vector<float> probs(static_cast<size_t>(T * E)), sw(static_cast<size_t>(T * K)),
          wt(static_cast<size_t>(T * K)), dl(static_cast<size_t>(T * E));
      std::vector<int32_t> sel(static_cast<size_t>(T * K)), ex(static_cast<size_t>(T * K));
      std::vector<int64_t> load(static_cast<size_t>(E));
      std::vector<double> seq_load(static_cast<size_t>(S * E));
      const auto whole = k::router_forward(o, l.data(), T, b, cu.data(), S, probs.data(), sel.data(), sw.data(),
                                           ex.data(), wt.data(), load.data());
      k::router_seq_loads(ex.data(), T, K, E, cu.data(), S, 0, seq_load.data());
      k::router_backward(o, l.data(), T, cu.data(), S, probs.data(), sel.data(), sw.data(), ex.data(), load.data(),
                         seq_load.data(), dw.data(), 1.5f, dl.data());
      OpRow row("router_route", "row shares", On::Cpu);
      // Two shares as two TP ranks hold them: ceil(T / 2) rows, the second maybe shorter.
      const int64_t ts = (T + 1) / 2;
      std::vector<int64_t> share_load(size_t(E), 0);
      std::vector<double> share_seq(size_t(S * E), 0.0);
      struct Share {
        int64_t begin, n;
        std::vector<float> probs, sw, wt;
        std::vector<int32_t> sel, ex;
      };
      std::vector<Share> shares;
      double z = 0, aux = 0;
      for (int64_t begin = 0; begin < T; begin += ts) {
        Share& h = shares.emplace_back();
        h.begin = begin, h.n = std::min(ts, T - begin);
        RouterOptions so = o;
        so.row_begin = begin, so.total_tokens = T;
        h.probs.resize(static_cast<size_t>(h.n * E)), h.sw.resize(static_cast<size_t>(h.n * K)),
            h.wt.resize(static_cast<size_t>(h.n * K));
        h.sel.resize(static_cast<size_t>(h.n * K)), h.ex.resize(static_cast<size_t>(h.n * K));
        std::vector<int64_t> ld(static_cast<size_t>(E));
        std::vector<double> sq(static_cast<size_t>(S * E));
        z += k::router_route(so, l.data() + begin * E, h.n, b, h.probs.data(), h.sel.data(), h.sw.data(), h.ex.data(),
                             h.wt.data(), ld.data());
        k::router_seq_loads(h.ex.data(), h.n, K, E, cu.data(), S, begin, sq.data());
        for (size_t e = 0; e < ld.size(); ++e) share_load[e] += ld[e];
        for (size_t i = 0; i < sq.size(); ++i) share_seq[i] += sq[i];
      }
      EXPECT_EQ(share_load, load) << c.name << dims(T, E, K);
      for (Share& h : shares) {
        RouterOptions so = o;
        so.row_begin = h.begin, so.total_tokens = T;
        aux += k::router_balancing_loss(so, h.probs.data(), h.n, cu.data(), S, share_load.data(), share_seq.data());
        std::vector<float> g(static_cast<size_t>(h.n * E));
        k::router_backward(so, l.data() + h.begin * E, h.n, cu.data(), S, h.probs.data(), h.sel.data(), h.sw.data(),
                           h.ex.data(), share_load.data(), share_seq.data(), dw.data() + h.begin * K, 1.5f, g.data());
        for (size_t i = 0; i < g.size(); ++i)
          EXPECT_NEAR(g[i], dl[size_t(h.begin * E) + i], 1e-6 + 1e-5 * std::fabs(dl[size_t(h.begin * E) + i]))
              << c.name << dims(T, E, K) << " row " << h.begin + int64_t(i) / E;
      }
      EXPECT_NEAR(aux, whole.aux_loss, 1e-9 + 1e-6 * whole.aux_loss) << c.name << dims(T, E, K);
      EXPECT_NEAR(z, whole.z_loss, 1e-9 + 1e-6 * whole.z_loss) << c.name << dims(T, E, K);
    }
}

// router_topk through the ops facade on a CUDA Backend, the same cases as the CPU row.
TEST(RouterCuda, TopK) {
  CUDA_ROW("router_topk", "fwd");
#ifdef MOE_HAVE_CUDA
  Rng rng(142);
  for (auto [T, E, K] : kRouterShapes)
    for (const auto& c : router_cases(T, E, K))
      for (bool ties : {false, true}) {
        if (ties && c.bias) continue;
        auto l = randn(size_t(T * E), rng, 2.0);
        if (ties)
          for (auto& x : l) x = std::round(x * 2) / 2;
        auto bias = randn(size_t(E), rng, 0.5);
        DeviceIn<float> L(l), B(bias);
        Guarded<int32_t> ex(size_t(T * K), -9);
        Guarded<float> wt(size_t(T * K), qnan());
        DeviceOut<int32_t> EX(ex);
        DeviceOut<float> WT(wt);
        ops::router_topk(gpu(), c.o, L.get(), T, c.bias ? B.get() : nullptr, EX.get(), WT.get());
        EX.fetch(), WT.fetch();
        const RefRouting r = ref_route(c.o, widen(l), T, c.bias ? &bias : nullptr, {});
        const std::string what = "cuda router_topk " + c.name + dims(T, E, K) + (ties ? " ties" : "");
        EXPECT_TRUE(ex.intact()) << what;
        EXPECT_EQ(ex.vec(), r.selected) << what;
        RouterOptions o = c.o;
        o.capacity = 0;
        expect_close(what, wt, ref_route(o, widen(l), T, c.bias ? &bias : nullptr, {}).weight, kTolF32);
      }
#endif
}

TEST(RouterCuda, NoTwinYet) {
  // router_forward / router_backward (drops, loads, losses) stay on the CPU for now; the others
  // are its pieces, not ops of the facade.
  for (const char* op : {"router_softmax", "router_drop_over_capacity", "router_z_loss"}) no_cuda_twin(op, "fwd");
  for (const char* op : {"router_aux_loss", "router_seq_aux_loss", "router_forward"}) {
    no_cuda_twin(op, "fwd");
    no_cuda_twin(op, "bwd (fd)");
  }
  no_cuda_twin("router_z_loss", "bwd (fd)");
  no_cuda_twin("router_route", "row shares");
}
