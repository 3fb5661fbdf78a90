// Every collective of NcclCommunicator on N processes with one GPU each (run by ctest under mpirun
// -np 1 and -np 2), on device buffers, against the value each rank computes on the host from what
// every rank contributed: all dtypes, uneven all-to-all with zero-length regions and gaps, send/recv
// in posting order, split() (ncclCommSplit) and split_by_new_ids(), NcclProcessGroups of several
// layouts (each group holds exactly the world ranks group_ranks() lists), and creation refused on
// every rank, before NCCL is entered, when one rank's device is bad.
//
// The communicator under test queues on a non-blocking stream while the test copies results back
// with plain cudaMemcpy on the legacy stream, which does not wait for that stream: a collective that
// returned before its stream finished would show as wrong values. Without NCCL, without a GPU, or
// with fewer GPUs than ranks on this machine, every rank exits 77 (ctest: skipped) with the reason.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "dist/launch.h"
#include "dist/mpi_communicator.h"
#include "dist/nccl_communicator.h"
#include "dist/nccl_process_groups.h"
#include "dist/process_groups.h"

#ifdef MOE_HAVE_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_ops.h"
#endif

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

#ifdef MOE_HAVE_CUDA

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw_internal("test: {} failed: {}", what, cudaGetErrorString(e));
}

// A device copy of a host vector. put() waits until the data is on the device (whatever stream the
// communicator uses); get() is a plain cudaMemcpy, which does not wait for other streams.
template <class T>
class Dev {
 public:
  explicit Dev(const std::vector<T>& host) : n_(host.size()) {
    cuda_check(cudaMalloc(&p_, n_ ? n_ * sizeof(T) : 1), "cudaMalloc");
    put(host);
  }
  explicit Dev(size_t n, T fill) : Dev(std::vector<T>(n, fill)) {}
  ~Dev() { cudaFree(p_); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  void put(const std::vector<T>& host) {
    if (n_) cuda_check(cudaMemcpy(p_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
    cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  }
  std::vector<T> get() const {
    std::vector<T> host(n_);
    if (n_) cuda_check(cudaMemcpy(host.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
    return host;
  }
  T* ptr() const { return static_cast<T*>(p_); }

 private:
  void* p_ = nullptr;
  size_t n_;
};

// The value rank r contributes at index i (small integers and halves: exact in f32 and bf16 sums).
float val(int r, int i) { return float((i * 7 + r * 3) % 11 - 5) * 0.5f; }

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = f32_to_bf16(v[i]);
  return out;
}

void all_reduce_checks(Communicator& c) {
  const int n = c.size(), r = c.rank(), K = 1000;
  std::vector<float> x(K);
  for (int i = 0; i < K; ++i) x[size_t(i)] = val(r, i);
  Dev<float> sum(x), mx(x);
  Dev<uint16_t> bsum(to_bf16(x)), bmax(to_bf16(x));
  c.all_reduce(sum.ptr(), K, DataType::kF32, ReduceOp::kSum);
  c.all_reduce(mx.ptr(), K, DataType::kF32, ReduceOp::kMax);
  c.all_reduce(bsum.ptr(), K, DataType::kBF16, ReduceOp::kSum);
  c.all_reduce(bmax.ptr(), K, DataType::kBF16, ReduceOp::kMax);
  const auto hs = sum.get(), hm = mx.get();
  const auto hbs = bsum.get(), hbm = bmax.get();
  for (int i = 0; i < K; ++i) {
    float s = 0, m = -1e30f;
    for (int q = 0; q < n; ++q) s += val(q, i), m = std::max(m, val(q, i));
    const size_t u = size_t(i);
    EXPECT(hs[u] == s, "f32 sum at {}: {} vs {}", i, hs[u], s);
    EXPECT(hm[u] == m, "f32 max at {}: {} vs {}", i, hm[u], m);
    EXPECT(bf16_to_f32(hbs[u]) == s, "bf16 sum at {}: {} vs {}", i, bf16_to_f32(hbs[u]), s);
    EXPECT(bf16_to_f32(hbm[u]) == m, "bf16 max at {}: {} vs {}", i, bf16_to_f32(hbm[u]), m);
  }
  // Integers: i64 beyond 32 bits, i32 negative, u8 max; f64 beyond f32's precision.
  Dev<int64_t> big(std::vector<int64_t>{(int64_t(1) << 40) * (r + 1), -r});
  c.all_reduce(big.ptr(), 2, DataType::kI64, ReduceOp::kSum);
  const auto hb = big.get();
  EXPECT(hb[0] == (int64_t(1) << 40) * n * (n + 1) / 2 && hb[1] == -int64_t(n) * (n - 1) / 2, "i64 sum {} {}", hb[0],
         hb[1]);
  Dev<int32_t> small(std::vector<int32_t>{-r, r * r});
  c.all_reduce(small.ptr(), 2, DataType::kI32, ReduceOp::kMax);
  const auto hsm = small.get();
  EXPECT(hsm[0] == 0 && hsm[1] == (n - 1) * (n - 1), "i32 max {} {}", hsm[0], hsm[1]);
  Dev<uint8_t> bytes(std::vector<uint8_t>{uint8_t(r), uint8_t(200 + r), uint8_t(r == n - 1 ? 9 : 0)});
  c.all_reduce(bytes.ptr(), 3, DataType::kU8, ReduceOp::kMax);
  const auto hu = bytes.get();
  EXPECT(hu[0] == n - 1 && hu[1] == 200 + n - 1 && hu[2] == 9, "u8 max {} {} {}", hu[0], hu[1], hu[2]);
  Dev<double> dbl(std::vector<double>{1e15 + r, 0.125 * r});
  c.all_reduce(dbl.ptr(), 2, DataType::kF64, ReduceOp::kSum);
  const auto hd = dbl.get();
  const int64_t rank_sum = int64_t(n) * (n - 1) / 2;  // 0 + 1 + ... + (n - 1), exact
  EXPECT(hd[0] == 1e15 * n + double(rank_sum) && hd[1] == 0.125 * double(rank_sum), "f64 sum {} {}", hd[0], hd[1]);
  // Large enough for NCCL's pipelined, multi-chunk path (12 MiB of f32).
  const int64_t L = int64_t(3) << 20;
  std::vector<float> lx(static_cast<size_t>(L));
  for (int64_t i = 0; i < L; ++i) lx[size_t(i)] = float(i % 1000 + r);
  Dev<float> large(lx);
  c.all_reduce(large.ptr(), L, DataType::kF32, ReduceOp::kSum);
  const auto hl = large.get();
  int64_t wrong = 0;
  for (int64_t i = 0; i < L; ++i) wrong += hl[size_t(i)] != float(n * (i % 1000) + rank_sum);
  EXPECT(wrong == 0, "large f32 sum: {} of {} wrong", wrong, L);
  c.all_reduce(sum.ptr(), 0, DataType::kF32, ReduceOp::kSum);  // empty: legal, nothing changes
  EXPECT(sum.get() == hs, "an empty all_reduce changed the buffer");
}

void reduce_scatter_gather_checks(Communicator& c) {
  const int n = c.size(), r = c.rank(), K = 37;
  std::vector<float> send(size_t(n * K));
  for (int i = 0; i < n * K; ++i) send[size_t(i)] = val(r, i);
  Dev<float> dsend(send), drecv(size_t(K), -99.f);
  c.reduce_scatter(dsend.ptr(), drecv.ptr(), K, DataType::kF32, ReduceOp::kSum);
  const auto recv = drecv.get();
  for (int i = 0; i < K; ++i) {
    float want = 0;
    for (int q = 0; q < n; ++q) want += val(q, r * K + i);
    EXPECT(recv[size_t(i)] == want, "reduce_scatter at {}: {} vs {}", i, recv[size_t(i)], want);
  }
  Dev<uint16_t> bsend(to_bf16(send)), brecv(size_t(K), uint16_t(0));
  c.reduce_scatter(bsend.ptr(), brecv.ptr(), K, DataType::kBF16, ReduceOp::kMax);
  const auto hb = brecv.get();
  for (int i = 0; i < K; ++i) {
    float want = -1e30f;
    for (int q = 0; q < n; ++q) want = std::max(want, val(q, r * K + i));
    EXPECT(bf16_to_f32(hb[size_t(i)]) == want, "bf16 reduce_scatter max at {}", i);
  }
  Dev<int64_t> mine(std::vector<int64_t>{r * 100, r * 100 + 1, r * 100 + 2}), all(size_t(3 * n), int64_t(-1));
  c.all_gather(mine.ptr(), all.ptr(), 3, DataType::kI64);
  const auto ha = all.get();
  for (int q = 0; q < n; ++q)
    for (int i = 0; i < 3; ++i) EXPECT(ha[size_t(q * 3 + i)] == q * 100 + i, "all_gather [{}][{}]", q, i);
}

// Uneven all-to-all: rank s sends count(s, d) elements to d (zero for some pairs), with a one-element
// gap before every region on both sides, so offsets are exercised and stray writes are seen.
template <class T>
void all_to_all_checks(Communicator& c, DataType dtype, bool all_to_rank0) {
  const int n = c.size(), r = c.rank();
  auto count = [&](int s, int d) -> int64_t { return all_to_rank0 ? (d == 0 ? 5 + s : 0) : (s + 2 * d) % 3 * (s + 1); };
  const T kGap = T(-77);
  const size_t un = static_cast<size_t>(n);
  std::vector<int64_t> sc(un), so(un), rc(un), ro(un);
  int64_t sent = 0, got = 0;
  for (int q = 0; q < n; ++q) {
    so[size_t(q)] = sent + 1, sc[size_t(q)] = count(r, q), sent += 1 + sc[size_t(q)];
    ro[size_t(q)] = got + 1, rc[size_t(q)] = count(q, r), got += 1 + rc[size_t(q)];
  }
  std::vector<T> send(size_t(sent + 1), kGap);
  for (int q = 0; q < n; ++q)
    for (int64_t k = 0; k < sc[size_t(q)]; ++k) send[size_t(so[size_t(q)] + k)] = T(r * 1000 + q * 10 + k);
  Dev<T> dsend(send), drecv(size_t(got + 1), kGap);
  c.all_to_all(dsend.ptr(), sc, so, drecv.ptr(), rc, ro, dtype);
  const auto recv = drecv.get();
  for (int q = 0; q < n; ++q) {
    EXPECT(recv[size_t(ro[size_t(q)] - 1)] == kGap, "all_to_all wrote into the gap before rank {}'s region", q);
    for (int64_t k = 0; k < rc[size_t(q)]; ++k)
      EXPECT(recv[size_t(ro[size_t(q)] + k)] == T(q * 1000 + r * 10 + k), "{} all_to_all from {} at {}: {}",
             data_type_name(dtype), q, k, double(recv[size_t(ro[size_t(q)] + k)]));
  }
  EXPECT(recv.back() == kGap, "all_to_all wrote past the last region");
}

void broadcast_send_recv_checks(Communicator& c) {
  const int n = c.size(), r = c.rank(), root = n - 1;
  std::vector<int32_t> b(50, -1);
  if (r == root)
    for (int i = 0; i < 50; ++i) b[size_t(i)] = i * i;
  Dev<int32_t> buf(b);
  c.broadcast(buf.ptr(), 50, DataType::kI32, root);
  const auto hb = buf.get();
  for (int i = 0; i < 50; ++i) EXPECT(hb[size_t(i)] == i * i, "broadcast at {}: {}", i, hb[size_t(i)]);
  Dev<double> d(std::vector<double>{r == 0 ? 0.1 : -1.0, r == 0 ? 1e300 : 0.0});
  c.broadcast(d.ptr(), 2, DataType::kF64, 0);
  const auto hd = d.get();
  EXPECT(hd[0] == 0.1 && hd[1] == 1e300, "f64 broadcast {} {}", hd[0], hd[1]);

  // A rank cannot send to itself under NCCL: refused by name, and the communicator stays usable.
  std::string what;
  try {
    c.send(buf.ptr(), 1, DataType::kI32, r);
  } catch (const InternalError& e) {
    what = e.what();
  }
  EXPECT(what.find("send") != std::string::npos && what.find("'" + c.name() + "'") != std::string::npos,
         "send to self gave '{}'", what);
  if (n < 2) return;
  // A ring: even ranks send first, odd ranks receive first. Two messages of different sizes per
  // direction (NCCL matches them in posting order) and a zero-length one between them.
  const int next = (r + 1) % n, prev = (r + n - 1) % n;
  std::vector<float> o1(9), o2(1000);
  for (int i = 0; i < 9; ++i) o1[size_t(i)] = float(r * 10 + i);
  for (int i = 0; i < 1000; ++i) o2[size_t(i)] = float(r * 10000 + i);
  Dev<uint16_t> out1(to_bf16(o1)), in1(9, uint16_t(0));
  Dev<float> out2(o2), in2(1000, 0.f);
  auto do_send = [&] {
    c.send(out1.ptr(), 9, DataType::kBF16, next, 3);
    c.send(nullptr, 0, DataType::kBF16, next, 4);
    c.send(out2.ptr(), 1000, DataType::kF32, next, 5);
  };
  auto do_recv = [&] {
    c.recv(in1.ptr(), 9, DataType::kBF16, prev, 3);
    c.recv(nullptr, 0, DataType::kBF16, prev, 4);
    c.recv(in2.ptr(), 1000, DataType::kF32, prev, 5);
  };
  if (r % 2 == 0) do_send(), do_recv();
  else do_recv(), do_send();
  const auto h1 = in1.get();
  const auto h2 = in2.get();
  for (int i = 0; i < 9; ++i) EXPECT(bf16_to_f32(h1[size_t(i)]) == float(prev * 10 + i), "ring recv at {}", i);
  for (int i = 0; i < 1000; ++i) EXPECT(h2[size_t(i)] == float(prev * 10000 + i), "second ring recv at {}", i);
  c.barrier();
}

// Parity groups ordered by descending rank, made by ncclCommSplit and by new unique ids.
void split_checks(NcclCommunicator& world) {
  const int n = world.size(), r = world.rank();
  int members = 0, above = 0, sum = 0;
  for (int q = 0; q < n; ++q)
    if (q % 2 == r % 2) ++members, sum += q, above += q > r;
  for (int way = 0; way < 2; ++way) {
    std::unique_ptr<Communicator> sub;
    if (way == 0) sub = world.split(r % 2, -r, "parity");
    else sub = world.split_by_new_ids(r % 2, -r, "parity_ids");
    EXPECT(sub->size() == members && sub->rank() == above, "{}: rank {} of {}", sub->name(), sub->rank(), sub->size());
    Dev<int32_t> v(std::vector<int32_t>{r});
    sub->all_reduce(v.ptr(), 1, DataType::kI32, ReduceOp::kSum);
    EXPECT(v.get()[0] == sum, "{} sum {} vs {}", sub->name(), v.get()[0], sum);
    all_to_all_checks<float>(*sub, DataType::kF32, false);
    sub->barrier();
  }
}

// Each group NcclProcessGroups gives this rank holds exactly the world ranks group_ranks() lists, in
// that order (all-gathered world ranks over the group, on device). On the legacy default stream.
void process_group_checks(Communicator& mpi_world, const ParallelLayout& l, int device) {
  NcclProcessGroups groups(l, mpi_world, device, nullptr);
  EXPECT(groups.world().size() == mpi_world.size() && groups.world().rank() == mpi_world.rank(), "nccl world");
  for (Group g : kAllGroups) {
    Communicator& c = groups.get(g);
    EXPECT(dynamic_cast<NcclCommunicator*>(&c) != nullptr, "{} group is not an NCCL communicator", group_name(g));
    Dev<int32_t> me(std::vector<int32_t>{mpi_world.rank()}), members(size_t(c.size()), -1);
    c.all_gather(me.ptr(), members.ptr(), 1, DataType::kI32);
    const auto got = members.get();
    std::vector<int32_t> want;
    for (const auto& grp : group_ranks(l, g))
      for (int q : grp)
        if (q == mpi_world.rank()) want.assign(grp.begin(), grp.end());
    EXPECT(got == want, "{} group of {}: {} vs {}", group_name(g), to_string(l), fmt::join(got, ","),
           fmt::join(want, ","));
  }
  all_reduce_checks(groups.get(Group::kEp));
  all_to_all_checks<int64_t>(groups.get(Group::kEp), DataType::kI64, false);
}

// A bad device on the last rank: every rank throws, before any of them enters ncclCommInitRank.
void create_failure_checks(Communicator& mpi_world, int device) {
  const int n = mpi_world.size(), r = mpi_world.rank();
  std::string what;
  try {
    NcclCommunicator::create(mpi_world, r == n - 1 ? 9999 : device, nullptr, "doomed");
  } catch (const InternalError& e) {
    what = e.what();
  }
  const std::string want = r == n - 1 ? "CUDA device 9999 does not exist"
                                      : fmt::format("rank {} of 'world' could not prepare its device", n - 1);
  EXPECT(what.find(want) != std::string::npos && what.find("'doomed'") != std::string::npos, "bad device gave '{}'",
         what);
}

#endif  // MOE_HAVE_CUDA

// Why this machine cannot run the checks, or "".
std::string skip_reason(const LaunchEnv& env) {
  if (!NcclCommunicator::available())
    return "moectl was built without NCCL (needs the CUDA toolkit with NCCL; MOE_CUDA=AUTO or ON)";
#ifdef MOE_HAVE_CUDA
  std::string why;
  if (!kernels::cuda::device_available(&why)) return why;
  const int devices = NcclCommunicator::device_count();
  if (devices < env.local_size)
    return fmt::format("needs one GPU per rank: {} visible for {} ranks on this machine", devices, env.local_size);
  return "";
#else
  (void)env;
  return "moectl was built without CUDA";
#endif
}

}  // namespace

int main() {
  try {
    const LaunchEnv env = launch_env();
    std::string why = skip_reason(env);
    if (!MpiCommunicator::available()) {
      std::printf("skipped: moectl was built without MPI\n");
      return 77;
    }
    auto mpi = MpiCommunicator::world();
    g_rank = mpi->rank();
    // Every rank skips, or none: a rank that went on alone would wait forever.
    int32_t skip = why.empty() ? 0 : 1;
    mpi->all_reduce(&skip, 1, DataType::kI32, ReduceOp::kMax);
    if (skip) {
      if (g_rank == 0)
        std::printf("skipped: %s\n", why.empty() ? "another rank cannot run the NCCL checks" : why.c_str());
      std::fflush(stdout);
      return 77;
    }
#ifdef MOE_HAVE_CUDA
    const int n = mpi->size(), device = env.local_rank;
    cudaStream_t stream = nullptr;
    cuda_check(cudaSetDevice(device), "cudaSetDevice");
    cuda_check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    {
      auto world = NcclCommunicator::create(*mpi, device, stream, "world");
      EXPECT(world->size() == n && world->rank() == g_rank && world->device() == device && world->stream() == stream,
             "nccl world: rank {} of {}", world->rank(), world->size());
      all_reduce_checks(*world);
      reduce_scatter_gather_checks(*world);
      all_to_all_checks<float>(*world, DataType::kF32, false);
      all_to_all_checks<float>(*world, DataType::kF32, true);
      all_to_all_checks<int64_t>(*world, DataType::kI64, false);
      broadcast_send_recv_checks(*world);
      split_checks(*world);
      world->barrier();
    }
    if (n == 1) {
      process_group_checks(*mpi, ParallelLayout{}, device);
    } else if (n == 2) {
      process_group_checks(*mpi, ParallelLayout::from_flags(2, 1, 1, 2, 1, 1, 1), device);  // DP2 EP2
      process_group_checks(*mpi, ParallelLayout::from_flags(2, 2, 1, 1, 0, 1, 1), device);  // TP2
      process_group_checks(*mpi, ParallelLayout::from_flags(2, 1, 2, 1, 0, 1, 1), device);  // PP2
    } else if (n == 4) {
      process_group_checks(*mpi, ParallelLayout::from_flags(4, 2, 1, 2, 1, 1, 1), device);  // TP2 DP2, EP2
      process_group_checks(*mpi, ParallelLayout::from_flags(4, 1, 1, 4, 1, 2, 1), device);  // CP2 DP2, EP4
    }
    create_failure_checks(*mpi, device);
    cuda_check(cudaStreamDestroy(stream), "cudaStreamDestroy");
#endif
    mpi->barrier();
    int32_t totals[2] = {g_checks, g_failed};
    mpi->all_reduce(totals, 2, DataType::kI32, ReduceOp::kSum);
    if (g_rank == 0)
      std::printf("nccl collectives on %d ranks: %d checks, %d failed\n", mpi->size(), int(totals[0]), int(totals[1]));
    return totals[1] == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    // Exit without MPI_Finalize: mpirun then ends every other rank instead of leaving them waiting.
    std::fprintf(stderr, "rank %d: %s\n", g_rank, e.what());
    std::fflush(stderr);
    std::_Exit(1);
  }
}
