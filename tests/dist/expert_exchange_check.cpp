// ExpertExchange (the EP all-to-all of the token dispatcher) on N processes under mpirun: every
// rank routes its own random tokens over N x 2 experts, dispatches the rows to the experts'
// owners, each owner applies its experts (row times (global expert id + 1)), and the rows come
// back and are combined; the result must equal what the rank computes alone from its routing.
// Also with capacity padding (zero rows in every block) and dropped slots (-1), and the backward
// direction (dispatch then combine of gradients is the identity on the rows).
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "dist/mpi_communicator.h"
#include "kernels/ops.h"
#include "model/expert_exchange.h"

using namespace moe;
using namespace moe::model;

namespace {

int g_rank = 0, g_failed = 0, g_checks = 0;

void expect(bool ok, const char* what, double detail) {
  ++g_checks;
  if (!ok) ++g_failed, std::fprintf(stderr, "rank %d: %s (%g)\n", g_rank, what, detail);
}

void check_exchange(dist::Communicator& ep, int64_t T, int64_t pad_to, bool drops, uint32_t seed) {
  const Backend be;
  const int64_t El = 2, E = ep.size() * El, K = 2, D = 5;
  std::mt19937 rng(seed * 977 + uint32_t(ep.rank()) * 13);
  Routing r;
  r.T = T, r.K = K;
  for (int64_t t = 0; t < T; ++t) {
    const int a = int(rng() % uint32_t(E));
    int b = int(rng() % uint32_t(E - 1));
    if (b >= a) ++b;
    r.expert_TK.push_back(drops && rng() % 5 == 0 ? -1 : a);
    r.expert_TK.push_back(b);
    r.weight_TK.push_back(0.25f + float(rng() % 100) / 200.0f);
    r.weight_TK.push_back(0.25f + float(rng() % 100) / 200.0f);
  }
  if (pad_to > 0) {  // the padded layout holds at most pad_to rows per expert: drop the excess
    std::vector<int64_t> n(size_t(E), 0);
    for (auto& e : r.expert_TK)
      if (e >= 0 && ++n[size_t(e)] > pad_to) e = -1;
  }
  std::vector<float> x(size_t(T * D));
  for (auto& v : x) v = float(int(rng() % 17) - 8) * 0.125f;
  const TokenDispatcher disp(be, r, E, pad_to);
  const ExpertExchange xc(be, disp, ep, El);
  std::vector<float> x_perm(size_t(disp.rows() * D)), x_local(size_t(xc.local_rows() * D));
  disp.permute(x.data(), D, x_perm.data());
  xc.dispatch(x_perm.data(), D, x_local.data());
  // The local experts: rows of local expert e are [offset, offset + block); global id rank*El + e.
  std::vector<float> y_local(x_local.size());
  for (int64_t e = 0; e < El; ++e)
    for (int64_t i = xc.local_offsets()[size_t(e)]; i < xc.local_offsets()[size_t(e)] + xc.local_blocks()[size_t(e)];
         ++i)
      for (int64_t d = 0; d < D; ++d)
        y_local[size_t(i * D + d)] = x_local[size_t(i * D + d)] * float(ep.rank() * El + e + 1);
  std::vector<float> y_perm(x_perm.size()), out(size_t(T * D), 0.0f);
  xc.combine(y_local.data(), D, y_perm.data());
  disp.unpermute_add(y_perm.data(), D, out.data());
  double worst = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d) {
      double ref = 0;
      for (int64_t k = 0; k < K; ++k) {
        const int e = r.expert_TK[size_t(t * K + k)];
        if (e >= 0) ref += double(r.weight_TK[size_t(t * K + k)]) * x[size_t(t * D + d)] * (e + 1);
      }
      worst = std::max(worst, std::fabs(ref - out[size_t(t * D + d)]));
    }
  expect(worst < 1e-5, "combine(experts(dispatch(x))) differs from the local computation", worst);
  // Rows are conserved over the group, and combine inverts dispatch.
  int64_t rows[2] = {disp.rows(), xc.local_rows()};
  ep.all_reduce(rows, 2, dist::DataType::kI64, dist::ReduceOp::kSum);
  expect(rows[0] == rows[1], "rows sent over the group != rows received", double(rows[0] - rows[1]));
  std::vector<float> back(x_perm.size());
  xc.combine(x_local.data(), D, back.data());
  expect(back == x_perm, "combine(dispatch(rows)) is not the identity", 0);
}

}  // namespace

int main() {
  try {
    auto world = dist::MpiCommunicator::world();
    g_rank = world->rank();
    uint32_t seed = 1;
    for (int64_t T : {0, 1, 7, 64})
      for (bool drops : {false, true}) {
        check_exchange(*world, T, 0, drops, seed++);
        check_exchange(*world, T, 3, drops, seed++);
      }
    int32_t totals[2] = {g_checks, g_failed};
    world->all_reduce(totals, 2, dist::DataType::kI32, dist::ReduceOp::kSum);
    if (g_rank == 0)
      std::printf("expert exchange on %d ranks: %d checks, %d failed\n", world->size(), int(totals[0]), int(totals[1]));
    return totals[1] == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", g_rank, e.what());
    std::fflush(stderr);
    std::_Exit(1);
  }
}
