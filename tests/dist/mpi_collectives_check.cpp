// Every collective of MpiCommunicator on N processes, blocking and started, (run by ctest under mpirun -np 2 and 4)
// against the value each rank computes locally from what every rank contributed; uneven
// all-to-all with zero-length sends; sub-groups from split() and the ProcessGroups of several
// layouts; an MPI failure surfacing as InternalError naming the rank and the call. Every rank
// checks its own results; the failure count is summed so all ranks exit with the same status.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "dist/mpi_communicator.h"
#include "dist/process_groups.h"

using namespace moe;
using namespace moe::dist;

namespace {

int g_checks = 0, g_failed = 0, g_rank = 0;

#define EXPECT(cond, ...)                                                                 \
  do {                                                                                    \
    ++g_checks;                                                                           \
    if (!(cond)) {                                                                        \
      ++g_failed;                                                                         \
      std::fprintf(stderr, "rank %d: %s:%d: %s: %s\n", g_rank, __FILE__, __LINE__, #cond, \
                   fmt::format(__VA_ARGS__).c_str());                                     \
    }                                                                                     \
  } while (0)

// The value rank r contributes at index i (small integers and halves: exact in f32 and bf16 sums).
float val(int r, int i) { return float((i * 7 + r * 3) % 11 - 5) * 0.5f; }

void all_reduce_checks(Communicator& c) {
  const int n = c.size(), r = c.rank(), K = 1000;
  std::vector<float> x(K);
  for (int i = 0; i < K; ++i) x[size_t(i)] = val(r, i);
  std::vector<float> mx = x;
  c.all_reduce(x.data(), K, DataType::kF32, ReduceOp::kSum);
  c.all_reduce(mx.data(), K, DataType::kF32, ReduceOp::kMax);
  std::vector<uint16_t> b(K), bm(K);
  for (int i = 0; i < K; ++i) b[size_t(i)] = bm[size_t(i)] = f32_to_bf16(val(r, i));
  c.all_reduce(b.data(), K, DataType::kBF16, ReduceOp::kSum);
  c.all_reduce(bm.data(), K, DataType::kBF16, ReduceOp::kMax);
  for (int i = 0; i < K; ++i) {
    float sum = 0, max = -1e30f;
    for (int q = 0; q < n; ++q) sum += val(q, i), max = std::max(max, val(q, i));
    EXPECT(x[size_t(i)] == sum, "f32 sum at {}: {} vs {}", i, x[size_t(i)], sum);
    EXPECT(mx[size_t(i)] == max, "f32 max at {}: {} vs {}", i, mx[size_t(i)], max);
    EXPECT(bf16_to_f32(b[size_t(i)]) == sum, "bf16 sum at {}: {} vs {}", i, bf16_to_f32(b[size_t(i)]), sum);
    EXPECT(bf16_to_f32(bm[size_t(i)]) == max, "bf16 max at {}", i);
  }
  // Integers: i64 beyond 32 bits, i32 negative, u8 max.
  int64_t big[2] = {(int64_t(1) << 40) * (r + 1), -r};
  c.all_reduce(big, 2, DataType::kI64, ReduceOp::kSum);
  EXPECT(big[0] == (int64_t(1) << 40) * n * (n + 1) / 2 && big[1] == -int64_t(n) * (n - 1) / 2, "i64 sum {} {}", big[0],
         big[1]);
  int32_t small[2] = {-r, r * r};
  c.all_reduce(small, 2, DataType::kI32, ReduceOp::kMax);
  EXPECT(small[0] == 0 && small[1] == (n - 1) * (n - 1), "i32 max {} {}", small[0], small[1]);
  uint8_t bytes[3] = {uint8_t(r), uint8_t(200 + r), uint8_t(r == n - 1 ? 9 : 0)};
  c.all_reduce(bytes, 3, DataType::kU8, ReduceOp::kMax);
  EXPECT(bytes[0] == n - 1 && bytes[1] == 200 + n - 1 && bytes[2] == 9, "u8 max");
  c.all_reduce(x.data(), 0, DataType::kF32, ReduceOp::kSum);  // empty: legal, nothing changes
}

// The non-blocking calls: several started before any is waited (in a different order from the
// start), one of each to every root, advanced by test(); the results as the blocking calls'.
void started_checks(Communicator& c) {
  const int n = c.size(), r = c.rank(), K = 20000;  // large enough for MPI's rendezvous protocol
  const std::vector<float> zeros(K);
  std::vector<std::vector<float>> red(size_t(n), zeros), bc(size_t(n), zeros);
  std::vector<float> sum(K);
  for (int i = 0; i < K; ++i) sum[size_t(i)] = val(r, i);
  std::vector<std::unique_ptr<Communicator::Request>> started;
  started.push_back(c.start_all_reduce(sum.data(), K, DataType::kF32, ReduceOp::kSum));
  for (int root = 0; root < n; ++root) {
    for (int i = 0; i < K; ++i)
      red[size_t(root)][size_t(i)] = val(r, i + root), bc[size_t(root)][size_t(i)] = r == root ? val(root, -i) : 0.0f;
    started.push_back(c.start_reduce(red[size_t(root)].data(), K, DataType::kF32, ReduceOp::kSum, root));
    started.push_back(c.start_broadcast(bc[size_t(root)].data(), K, DataType::kF32, root));
  }
  for (auto& s : started) s->test();
  for (size_t k = started.size(); k-- > 0;) started[k]->wait();
  for (int i = 0; i < K; ++i) {
    float s = 0;
    for (int q = 0; q < n; ++q) s += val(q, i);
    EXPECT(sum[size_t(i)] == s, "started all_reduce at {}: {} vs {}", i, sum[size_t(i)], s);
  }
  for (int i = 0; i < K; ++i) {
    float s = 0;
    for (int q = 0; q < n; ++q) s += val(q, i + r);
    EXPECT(red[size_t(r)][size_t(i)] == s, "started reduce onto {} at {}: {} vs {}", r, i, red[size_t(r)][size_t(i)],
           s);
    for (int root = 0; root < n; ++root)
      EXPECT(bc[size_t(root)][size_t(i)] == val(root, -i), "started broadcast from {} at {}", root, i);
  }
}

void reduce_scatter_gather_checks(Communicator& c) {
  const int n = c.size(), r = c.rank(), K = 37;
  std::vector<float> send(size_t(n) * K), recv(K, -99);
  for (int chunk = 0; chunk < n; ++chunk)
    for (int i = 0; i < K; ++i) send[size_t(chunk) * size_t(K) + size_t(i)] = val(r, chunk * K + i);
  c.reduce_scatter(send.data(), recv.data(), K, DataType::kF32, ReduceOp::kSum);
  for (int i = 0; i < K; ++i) {
    float want = 0;
    for (int q = 0; q < n; ++q) want += val(q, r * K + i);
    EXPECT(recv[size_t(i)] == want, "reduce_scatter at {}: {} vs {}", i, recv[size_t(i)], want);
  }
  std::vector<uint16_t> bsend(size_t(n * K)), brecv(K);
  for (size_t i = 0; i < bsend.size(); ++i) bsend[i] = f32_to_bf16(val(r, int(i)));
  c.reduce_scatter(bsend.data(), brecv.data(), K, DataType::kBF16, ReduceOp::kMax);
  for (int i = 0; i < K; ++i) {
    float want = -1e30f;
    for (int q = 0; q < n; ++q) want = std::max(want, val(q, r * K + i));
    EXPECT(bf16_to_f32(brecv[size_t(i)]) == want, "bf16 reduce_scatter max at {}", i);
  }
  int64_t mine[3] = {r * 100, r * 100 + 1, r * 100 + 2};
  std::vector<int64_t> all(size_t(3 * n), -1);
  c.all_gather(mine, all.data(), 3, DataType::kI64);
  for (int q = 0; q < n; ++q)
    for (int i = 0; i < 3; ++i) EXPECT(all[size_t(q * 3 + i)] == q * 100 + i, "all_gather [{}][{}]", q, i);
}

// Uneven all-to-all: rank s sends count(s, d) elements to d (zero for some pairs), with a one-element
// gap before every region on both sides, so offsets are exercised and stray writes are seen.
void all_to_all_checks(Communicator& c, bool all_to_rank0) {
  const int n = c.size(), r = c.rank();
  auto count = [&](int s, int d) -> int64_t { return all_to_rank0 ? (d == 0 ? 5 + s : 0) : (s + 2 * d) % 3 * (s + 1); };
  const float kGap = -7777;
  const size_t un = static_cast<size_t>(n);
  std::vector<int64_t> sc(un), so(un), rc(un), ro(un);
  int64_t sent = 0, got = 0;
  for (int q = 0; q < n; ++q) {
    so[size_t(q)] = sent + 1, sc[size_t(q)] = count(r, q), sent += 1 + sc[size_t(q)];
    ro[size_t(q)] = got + 1, rc[size_t(q)] = count(q, r), got += 1 + rc[size_t(q)];
  }
  std::vector<float> send(size_t(sent + 1), kGap), recv(size_t(got + 1), kGap);
  for (int q = 0; q < n; ++q)
    for (int64_t k = 0; k < sc[size_t(q)]; ++k) send[size_t(so[size_t(q)] + k)] = float(r * 1000 + q * 10 + k);
  c.all_to_all(send.data(), sc, so, recv.data(), rc, ro, DataType::kF32);
  for (int q = 0; q < n; ++q) {
    EXPECT(recv[size_t(ro[size_t(q)] - 1)] == kGap, "all_to_all wrote into the gap before rank {}'s region", q);
    for (int64_t k = 0; k < rc[size_t(q)]; ++k)
      EXPECT(recv[size_t(ro[size_t(q)] + k)] == float(q * 1000 + r * 10 + k), "all_to_all from {} at {}: {}", q, k,
             recv[size_t(ro[size_t(q)] + k)]);
  }
  EXPECT(recv.back() == kGap, "all_to_all wrote past the last region");
}

void broadcast_send_recv_checks(Communicator& c) {
  const int n = c.size(), r = c.rank(), root = n - 1;
  std::vector<int32_t> buf(50, r == root ? 0 : -1);
  if (r == root)
    for (int i = 0; i < 50; ++i) buf[size_t(i)] = i * i;
  c.broadcast(buf.data(), 50, DataType::kI32, root);
  for (int i = 0; i < 50; ++i) EXPECT(buf[size_t(i)] == i * i, "broadcast at {}", i);
  // A ring: even ranks send first, odd ranks receive first, so blocking sends cannot deadlock.
  const int next = (r + 1) % n, prev = (r + n - 1) % n;
  std::vector<uint16_t> out(9), in(9, 0);
  for (int i = 0; i < 9; ++i) out[size_t(i)] = f32_to_bf16(float(r * 10 + i));
  auto do_send = [&] {
    c.send(out.data(), 9, DataType::kBF16, next, 3);
    c.send(nullptr, 0, DataType::kBF16, next, 4);  // zero-length messages still pair
  };
  auto do_recv = [&] {
    c.recv(in.data(), 9, DataType::kBF16, prev, 3);
    c.recv(nullptr, 0, DataType::kBF16, prev, 4);
  };
  if (r % 2 == 0) do_send(), do_recv();
  else do_recv(), do_send();
  for (int i = 0; i < 9; ++i) EXPECT(bf16_to_f32(in[size_t(i)]) == float(prev * 10 + i), "ring recv at {}", i);
  // exchange(): every rank sends 1 MiB both ways round the ring in one batch, sends listed first
  // (blocking sends in this order would deadlock: MPI buffers no message that large).
  const int64_t big = int64_t(1) << 18;
  const auto nbig = static_cast<size_t>(big);
  std::vector<float> to_next(nbig, float(r)), to_prev(nbig, float(-r)), from_prev(nbig, -1), from_next(nbig, -1);
  const Communicator::P2p ops[] = {{true, to_next.data(), big, DataType::kF32, next, 5},
                                   {true, to_prev.data(), big, DataType::kF32, prev, 6},
                                   {false, from_prev.data(), big, DataType::kF32, prev, 5},
                                   {false, from_next.data(), big, DataType::kF32, next, 6}};
  c.exchange(ops);
  EXPECT(from_prev.front() == float(prev) && from_prev.back() == float(prev), "exchange from prev: {}",
         from_prev.back());
  EXPECT(from_next.front() == float(-next) && from_next.back() == float(-next), "exchange from next: {}",
         from_next.back());
  c.barrier();
}

void split_checks(Communicator& world) {
  const int n = world.size(), r = world.rank();
  // Parity groups, ordered by descending world rank.
  auto sub = world.split(r % 2, -r, "parity");
  int members = 0, above = 0, sum = 0;
  for (int q = 0; q < n; ++q)
    if (q % 2 == r % 2) ++members, sum += q, above += q > r;
  EXPECT(sub->size() == members && sub->rank() == above, "parity group: rank {} of {}", sub->rank(), sub->size());
  int32_t v = r;
  sub->all_reduce(&v, 1, DataType::kI32, ReduceOp::kSum);
  EXPECT(v == sum, "parity group sum {} vs {}", v, sum);
  all_to_all_checks(*sub, false);
}

// Each group this rank gets from ProcessGroups holds exactly the world ranks group_ranks() lists,
// in that order (all-gathered world ranks over the group).
void process_group_checks(Communicator& world, const ParallelLayout& l) {
  ProcessGroups groups(l, world);
  for (Group g : kAllGroups) {
    Communicator& c = groups.get(g);
    std::vector<int32_t> members(size_t(c.size()), -1);
    int32_t me = world.rank();
    c.all_gather(&me, members.data(), 1, DataType::kI32);
    std::vector<int32_t> want;
    for (const auto& grp : group_ranks(l, g))
      for (int q : grp)
        if (q == world.rank()) want.assign(grp.begin(), grp.end());
    EXPECT(members == want, "{} group of {}: {} vs {}", group_name(g), to_string(l), fmt::join(members, ","),
           fmt::join(want, ","));
  }
  all_reduce_checks(groups.ep());
  all_to_all_checks(groups.ep(), false);
}

// An MPI failure (a message longer than the receive) is an InternalError naming the rank and call.
void failure_checks(Communicator& c) {
  if (c.size() < 2 || c.rank() > 1) return;
  int32_t buf[4] = {1, 2, 3, 4};
  if (c.rank() == 0) {
    c.send(buf, 4, DataType::kI32, 1, 9);
    return;
  }
  std::string what;
  try {
    c.recv(buf, 2, DataType::kI32, 0, 9);
  } catch (const InternalError& e) {
    what = e.what();
  }
  EXPECT(what.find("world rank 1") != std::string::npos && what.find("recv") != std::string::npos &&
             what.find("MPI_Recv") != std::string::npos,
         "truncated recv gave '{}'", what);
}

}  // namespace

int main() {
  try {
    auto world = MpiCommunicator::world();
    g_rank = world->rank();
    const int n = world->size();
    all_reduce_checks(*world);
    started_checks(*world);
    reduce_scatter_gather_checks(*world);
    all_to_all_checks(*world, false);
    all_to_all_checks(*world, true);
    broadcast_send_recv_checks(*world);
    split_checks(*world);
    if (n == 2) {
      process_group_checks(*world, ParallelLayout::from_flags(2, 1, 1, 2, 1, 1, 1));  // DP2 EP2
      process_group_checks(*world, ParallelLayout::from_flags(2, 2, 1, 1, 0, 1, 1));  // TP2
      process_group_checks(*world, ParallelLayout::from_flags(2, 1, 2, 1, 0, 1, 1));  // PP2
    } else if (n == 4) {
      process_group_checks(*world, ParallelLayout::from_flags(4, 2, 1, 2, 1, 1, 1));  // TP2 DP2, EP2 ETP1
      process_group_checks(*world, ParallelLayout::from_flags(4, 1, 2, 2, 1, 1, 1));  // PP2 DP2 EP2
      process_group_checks(*world, ParallelLayout::from_flags(4, 1, 1, 4, 1, 2, 1));  // CP2 DP2, EP4
    }
    failure_checks(*world);
    world->barrier();
    int32_t totals[2] = {g_checks, g_failed};
    world->all_reduce(totals, 2, DataType::kI32, ReduceOp::kSum);
    if (g_rank == 0)
      std::printf("mpi collectives on %d ranks: %d checks, %d failed\n", n, int(totals[0]), int(totals[1]));
    return totals[1] == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    // Exit without MPI_Finalize: mpirun then ends every other rank instead of leaving them waiting.
    std::fprintf(stderr, "rank %d: %s\n", g_rank, e.what());
    std::fflush(stderr);
    std::_Exit(1);
  }
}
