#include "dist/nccl_communicator.h"

#include "core/error.h"

#ifdef MOE_HAVE_NCCL
#include <cuda_runtime.h>
#include <nccl.h>  // includes cuda_bf16.h (CUDA 11+), which older NCCL headers need for ncclBfloat16

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "dist/collective_clock.h"

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 12, 0)
#error "moectl needs NCCL 2.12 or newer (bf16, ncclSend/ncclRecv, ncclCommGetAsyncError)"
#endif
#endif

namespace moe::dist {

#ifdef MOE_HAVE_NCCL

namespace {

// Makes `device` current for the scope and restores the caller's device afterwards, so a call never
// changes which device the calling thread works on. `status` is the cudaSetDevice result.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    status = previous_ == device ? cudaSuccess : cudaSetDevice(device);
    if (status != cudaSuccess) previous_ = -1, cudaGetLastError();  // no stale error for later checks
  }
  ~DeviceGuard() {
    if (previous_ >= 0 && status == cudaSuccess) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  cudaError_t status = cudaSuccess;

 private:
  int previous_ = -1;
};

ncclDataType_t nccl_type(DataType t) {
  switch (t) {
    case DataType::kF32: return ncclFloat32;
    case DataType::kBF16: return ncclBfloat16;
    case DataType::kI32: return ncclInt32;
    case DataType::kI64: return ncclInt64;
    case DataType::kU8: return ncclUint8;
    case DataType::kF64: return ncclFloat64;
  }
  return ncclUint8;
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::kSum ? ncclSum : ncclMax; }

std::string nccl_error(ncclResult_t r, ncclComm_t comm) {
  std::string s = ncclGetErrorString(r);
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 13, 0)
  const char* last = ncclGetLastError(comm);
  if (last && *last) s += std::string(" (") + last + ")";
#else
  (void)comm;
#endif
  return s;
}

// "world rank 3": the process, by its rank in the communicator that bootstrapped NCCL.
std::string origin_of(const Communicator& bootstrap) {
  return fmt::format("{} rank {}", bootstrap.name(), bootstrap.rank());
}

// A fixed-size record exchanged when a new group's unique id is handed out: whether the sender
// made one, and the id.
struct IdRecord {
  uint8_t ok = 0;
  uint8_t pad[7] = {};
  ncclUniqueId id{};
};

}  // namespace

struct NcclCommunicator::Impl {
  ncclComm_t comm = nullptr;  // null once aborted after an error
  int device = 0;
  cudaStream_t stream = nullptr;
  std::string origin;       // "world rank 3": error messages name the process, not only its group rank
  void* scratch = nullptr;  // one device word: the barrier's all-reduce
  bool failed = false;      // an error was thrown: the communicator is aborted, not destroyed

  ~Impl() {
    if (!comm && !scratch) return;
    const DeviceGuard guard(device);
    // Destroying flushes and frees; after an error NCCL may be stuck in a kernel, so abort instead.
    // Communicators are destroyed in the same order on every rank (the owners unwind alike).
    if (comm) failed ? ncclCommAbort(comm) : ncclCommDestroy(comm);
    if (scratch) cudaFree(scratch);
  }
};

bool NcclCommunicator::available() { return true; }

int NcclCommunicator::device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the error of a failed probe
    return 0;
  }
  return n;
}

NcclCommunicator::NcclCommunicator(std::unique_ptr<Impl> impl, int rank, int size, std::string name)
    : Communicator(rank, size, std::move(name)), impl_(std::move(impl)) {}

NcclCommunicator::~NcclCommunicator() = default;

int NcclCommunicator::device() const { return impl_->device; }
void* NcclCommunicator::stream() const { return impl_->stream; }

void NcclCommunicator::check_nccl(int result, const char* call, const char* fn) {
  const auto r = static_cast<ncclResult_t>(result);
  if (r == ncclSuccess) return;
  const std::string why = nccl_error(r, impl_->comm);
  impl_->failed = true;
  if (impl_->comm) ncclCommAbort(impl_->comm), impl_->comm = nullptr;
  throw_internal("{}: {}: {} failed: {}", impl_->origin, where(call), fn, why);
}

void NcclCommunicator::check_cuda(int result, const char* call, const char* fn) {
  const auto e = static_cast<cudaError_t>(result);
  if (e == cudaSuccess) return;
  impl_->failed = true;
  if (impl_->comm) ncclCommAbort(impl_->comm), impl_->comm = nullptr;
  throw_internal("{}: {}: {} failed: {}", impl_->origin, where(call), fn, cudaGetErrorString(e));
}

void NcclCommunicator::usable(const char* call) const {
  if (!impl_->comm)
    throw_internal("{}: {}: the NCCL communicator was aborted after an earlier error", impl_->origin, where(call));
}

// Spins for the first millisecond (small collectives finish in microseconds), then sleeps between
// polls so a long wait does not take a core from the rank's other threads. NCCL's asynchronous error
// (a peer's connection lost, a remote failure) ends the wait with an InternalError.
void NcclCommunicator::wait(const char* call) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  for (uint32_t i = 0;; ++i) {
    const cudaError_t e = cudaStreamQuery(impl_->stream);
    if (e == cudaSuccess) return;
    if (e != cudaErrorNotReady) check_cuda(e, call, "cudaStreamQuery");
    const bool slow = Clock::now() - start > std::chrono::milliseconds(1);
    if (slow || i % 64 == 63) {
      ncclResult_t async = ncclSuccess;
      check_nccl(ncclCommGetAsyncError(impl_->comm, &async), call, "ncclCommGetAsyncError");
      check_nccl(async, call, "an NCCL operation in flight");
    }
    if (slow) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

std::unique_ptr<NcclCommunicator> NcclCommunicator::create(Communicator& bootstrap, int device, void* stream,
                                                           std::string name) {
  const std::string origin = origin_of(bootstrap);
  auto fail = [&](const std::string& why) -> void {
    throw_internal("{}: creating NCCL communicator '{}' ({} ranks): {}", origin, name, bootstrap.size(), why);
  };
  if (dynamic_cast<NcclCommunicator*>(&bootstrap))
    fail("the bootstrap communicator must take host buffers (MPI or local), not be an NCCL one");

  // Everything that can fail on one rank alone is done, and agreed on, before NCCL is entered: a rank
  // that threw here while the others waited in ncclCommInitRank would leave them hanging.
  auto impl = std::make_unique<Impl>();
  impl->device = device;
  impl->stream = static_cast<cudaStream_t>(stream);
  impl->origin = origin;
  std::string local_error;
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    local_error = fmt::format("cudaGetDeviceCount failed: {}", cudaGetErrorString(e));
  } else if (device < 0 || device >= count) {
    local_error = fmt::format("CUDA device {} does not exist ({} visible)", device, count);
  }
  // The guard makes `device` current for the allocation and ncclCommInitRank (which uses the
  // current device), and restores the caller's device when create() returns.
  std::unique_ptr<DeviceGuard> guard;
  if (local_error.empty()) {
    guard = std::make_unique<DeviceGuard>(device);
    if (guard->status != cudaSuccess)
      local_error = fmt::format("cudaSetDevice({}) failed: {}", device, cudaGetErrorString(guard->status));
  }
  if (local_error.empty() && (e = cudaStreamQuery(impl->stream)) != cudaSuccess && e != cudaErrorNotReady)
    local_error =
        fmt::format("the stream is not usable on device {}: cudaStreamQuery failed: {}", device, cudaGetErrorString(e));
  if (local_error.empty() && (e = cudaMalloc(&impl->scratch, 16)) != cudaSuccess) {
    impl->scratch = nullptr;
    local_error = fmt::format("cudaMalloc failed: {}", cudaGetErrorString(e));
  }
  if (!local_error.empty()) cudaGetLastError();                  // no stale error for the caller's later checks
  int32_t bad = local_error.empty() ? 0 : bootstrap.rank() + 1;  // the highest failing rank, + 1
  bootstrap.all_reduce(&bad, 1, DataType::kI32, ReduceOp::kMax);
  if (!local_error.empty()) fail(local_error);
  if (bad) fail(fmt::format("rank {} of '{}' could not prepare its device", bad - 1, bootstrap.name()));

  IdRecord rec;
  if (bootstrap.rank() == 0) {
    const ncclResult_t r = ncclGetUniqueId(&rec.id);
    if (r != ncclSuccess) local_error = fmt::format("ncclGetUniqueId failed: {}", nccl_error(r, nullptr));
    rec.ok = r == ncclSuccess;
  }
  bootstrap.broadcast(&rec, int64_t(sizeof rec), DataType::kU8, 0);
  if (!local_error.empty()) fail(local_error);
  if (!rec.ok) fail(fmt::format("rank 0 of '{}' could not make the NCCL unique id", bootstrap.name()));

  ncclResult_t r = ncclSuccess;
  {
    // Timed and watched as a collective: a rank that never arrives ends the job after the timeout.
    const CollectiveScope scope(CollectiveKind::kSplit, name, 0);
    r = ncclCommInitRank(&impl->comm, bootstrap.size(), rec.id, bootstrap.rank());
  }
  if (r != ncclSuccess) {
    impl->comm = nullptr;
    fail(fmt::format("ncclCommInitRank failed: {}", nccl_error(r, nullptr)));
  }
  int rank = -1, size = -1;
  if (ncclCommUserRank(impl->comm, &rank) != ncclSuccess || ncclCommCount(impl->comm, &size) != ncclSuccess ||
      rank != bootstrap.rank() || size != bootstrap.size()) {
    impl->failed = true;
    fail(fmt::format("NCCL made rank {} of {}, expected {} of {}", rank, size, bootstrap.rank(), bootstrap.size()));
  }
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(std::move(impl), rank, size, std::move(name)));
}

void NcclCommunicator::do_all_reduce(void* buf, int64_t count, DataType dtype, ReduceOp op) {
  usable("all_reduce");
  if (count == 0) return;  // every rank gives the same count: all skip alike
  const DeviceGuard guard(impl_->device);
  check_cuda(guard.status, "all_reduce", "cudaSetDevice");
  check_nccl(ncclAllReduce(buf, buf, size_t(count), nccl_type(dtype), nccl_op(op), impl_->comm, impl_->stream),
             "all_reduce", "ncclAllReduce");
  wait("all_reduce");
}

void NcclCommunicator::do_reduce_scatter(const void* send, void* recv, int64_t count, DataType dtype, ReduceOp op) {
  usable("reduce_scatter");
  if (count == 0) return;
  const DeviceGuard guard(impl_->device);
  check_cuda(guard.status, "reduce_scatter", "cudaSetDevice");
  check_nccl(ncclReduceScatter(send, recv, size_t(count), nccl_type(dtype), nccl_op(op), impl_->comm, impl_->stream),
             "reduce_scatter", "ncclReduceScatter");
  wait("reduce_scatter");
}

void NcclCommunicator::do_all_gather(const void* send, void* recv, int64_t count, DataType dtype) {
  usable("all_gather");
  if (count == 0) return;
  const DeviceGuard guard(impl_->device);
  check_cuda(guard.status, "all_gather", "cudaSetDevice");
  check_nccl(ncclAllGather(send, recv, size_t(count), nccl_type(dtype), impl_->comm, impl_->stream), "all_gather",
             "ncclAllGather");
  wait("all_gather");
}

// One NCCL group of a send and a receive per peer with a non-empty region (a pair with nothing to
// move is skipped on both sides, as its counts agree), and this rank's own region copied on the
// device. NCCL runs the group's transfers concurrently, so the order of peers cannot deadlock.
void NcclCommunicator::do_all_to_all(const void* send, std::span<const int64_t> send_counts,
                                     std::span<const int64_t> send_offsets, void* recv,
                                     std::span<const int64_t> recv_counts, std::span<const int64_t> recv_offsets,
                                     DataType dtype) {
  usable("all_to_all");
  const size_t me = size_t(rank()), es = data_type_size(dtype);
  if (send_counts[me] != recv_counts[me])
    throw_internal("{}: {}: sends {} elements to itself but receives {}", impl_->origin, where("all_to_all"),
                   send_counts[me], recv_counts[me]);
  const DeviceGuard guard(impl_->device);
  check_cuda(guard.status, "all_to_all", "cudaSetDevice");
  const auto* s = static_cast<const char*>(send);
  auto* d = static_cast<char*>(recv);
  const ncclDataType_t t = nccl_type(dtype);
  if (send_counts[me] > 0)
    check_cuda(cudaMemcpyAsync(d + size_t(recv_offsets[me]) * es, s + size_t(send_offsets[me]) * es,
                               size_t(send_counts[me]) * es, cudaMemcpyDeviceToDevice, impl_->stream),
               "all_to_all", "cudaMemcpyAsync");
  // Every call of the group is made, and the group ended, before the first error is reported: NCCL
  // wants a started group ended.
  ncclResult_t first = ncclSuccess;
  const char* first_fn = "";
  auto note = [&](ncclResult_t r, const char* fn) {
    if (r != ncclSuccess && first == ncclSuccess) first = r, first_fn = fn;
  };
  check_nccl(ncclGroupStart(), "all_to_all", "ncclGroupStart");
  for (size_t q = 0; q < send_counts.size(); ++q) {
    if (q == me) continue;
    if (send_counts[q] > 0)
      note(ncclSend(s + size_t(send_offsets[q]) * es, size_t(send_counts[q]), t, int(q), impl_->comm, impl_->stream),
           "ncclSend");
    if (recv_counts[q] > 0)
      note(ncclRecv(d + size_t(recv_offsets[q]) * es, size_t(recv_counts[q]), t, int(q), impl_->comm, impl_->stream),
           "ncclRecv");
  }
  note(ncclGroupEnd(), "ncclGroupEnd");
  check_nccl(first, "all_to_all", first_fn);
  wait("all_to_all");
}

void NcclCommunicator::do_broadcast(void* buf, int64_t count, DataType dtype, int root) {
  usable("broadcast");
  if (count == 0) return;
  const DeviceGuard guard(impl_->device);
  check_cuda(guard.status, "broadcast", "cudaSetDevice");
  check_nccl(ncclBroadcast(buf, buf, size_t(count), nccl_type(dtype), root, impl_->comm, impl_->stream), "broadcast",
             "ncclBroadcast");
  wait("broadcast");
}

class NcclCommunicator::Started final : public Communicator::Request {
 public:
  Started(NcclCommunicator& c, const char* call) : comm_(c), call_(call) {
    const DeviceGuard guard(c.impl_->device);
    c.check_cuda(guard.status, call, "cudaSetDevice");
    c.check_cuda(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming), call, "cudaEventCreateWithFlags");
    c.check_cuda(cudaEventRecord(event_, c.impl_->stream), call, "cudaEventRecord");
  }
  ~Started() override { cudaEventDestroy(event_); }
  bool test() override { return comm_.event_done(event_, call_); }

 private:
  // As wait(): spin a millisecond, then poll every 50 us (NCCL's asynchronous errors checked).
  void do_wait() override {
    const auto start = std::chrono::steady_clock::now();
    while (!comm_.event_done(event_, call_))
      if (std::chrono::steady_clock::now() - start > std::chrono::milliseconds(1))
        std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  NcclCommunicator& comm_;
  const char* call_;
  cudaEvent_t event_ = nullptr;
};

bool NcclCommunicator::event_done(void* event, const char* call) {
  usable(call);
  const cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(event));
  if (e == cudaSuccess) return true;
  if (e != cudaErrorNotReady) check_cuda(e, call, "cudaEventQuery");
  ncclResult_t async = ncclSuccess;
  check_nccl(ncclCommGetAsyncError(impl_->comm, &async), call, "ncclCommGetAsyncError");
  check_nccl(async, call, "an NCCL operation in flight");
  return false;
}

std::unique_ptr<Communicator::Request> NcclCommunicator::started(const char* call, const char* fn, int64_t count,
                                                                 const std::function<int()>& enqueue) {
  usable(call);
  const DeviceGuard guard(impl_->device);
  check_cuda(guard.status, call, "cudaSetDevice");
  if (count > 0) check_nccl(enqueue(), call, fn);  // every rank gives the same count: all skip alike
  return std::make_unique<Started>(*this, call);
}

std::unique_ptr<Communicator::Request> NcclCommunicator::do_start_all_reduce(void* buf, int64_t count, DataType dtype,
                                                                             ReduceOp op) {
  return started("start_all_reduce", "ncclAllReduce", count, [&] {
    return ncclAllReduce(buf, buf, size_t(count), nccl_type(dtype), nccl_op(op), impl_->comm, impl_->stream);
  });
}

std::unique_ptr<Communicator::Request> NcclCommunicator::do_start_reduce(void* buf, int64_t count, DataType dtype,
                                                                         ReduceOp op, int root) {
  return started("start_reduce", "ncclReduce", count, [&] {
    return ncclReduce(buf, buf, size_t(count), nccl_type(dtype), nccl_op(op), root, impl_->comm, impl_->stream);
  });
}

std::unique_ptr<Communicator::Request> NcclCommunicator::do_start_broadcast(void* buf, int64_t count, DataType dtype,
                                                                            int root) {
  return started("start_broadcast", "ncclBroadcast", count, [&] {
    return ncclBroadcast(buf, buf, size_t(count), nccl_type(dtype), root, impl_->comm, impl_->stream);
  });
}

void NcclCommunicator::do_send(const void* buf, int64_t count, DataType dtype, int peer, int /*tag*/) {
  usable("send");
  if (peer == rank())
    throw_internal("{}: {}: NCCL cannot send to the sending rank itself (it would wait forever)", impl_->origin,
                   where("send"));
  if (count == 0) return;
  const DeviceGuard guard(impl_->device);
  check_cuda(guard.status, "send", "cudaSetDevice");
  check_nccl(ncclSend(buf, size_t(count), nccl_type(dtype), peer, impl_->comm, impl_->stream), "send", "ncclSend");
  wait("send");
}

void NcclCommunicator::do_recv(void* buf, int64_t count, DataType dtype, int peer, int /*tag*/) {
  usable("recv");
  if (peer == rank())
    throw_internal("{}: {}: NCCL cannot receive from the receiving rank itself (it would wait forever)", impl_->origin,
                   where("recv"));
  if (count == 0) return;
  const DeviceGuard guard(impl_->device);
  check_cuda(guard.status, "recv", "cudaSetDevice");
  check_nccl(ncclRecv(buf, size_t(count), nccl_type(dtype), peer, impl_->comm, impl_->stream), "recv", "ncclRecv");
  wait("recv");
}

void NcclCommunicator::do_exchange(std::span<const P2p> ops) {
  usable("exchange");
  const DeviceGuard guard(impl_->device);
  check_cuda(guard.status, "exchange", "cudaSetDevice");
  // One NCCL group: every send and receive in flight together (ncclSend/ncclRecv match in order).
  check_nccl(ncclGroupStart(), "exchange", "ncclGroupStart");
  for (const P2p& o : ops) {
    if (o.peer == rank())
      throw_internal("{}: {}: NCCL cannot exchange with the rank itself", impl_->origin, where("exchange"));
    if (o.count == 0) continue;
    if (o.send)
      check_nccl(ncclSend(o.buf, size_t(o.count), nccl_type(o.dtype), o.peer, impl_->comm, impl_->stream), "exchange",
                 "ncclSend");
    else
      check_nccl(ncclRecv(o.buf, size_t(o.count), nccl_type(o.dtype), o.peer, impl_->comm, impl_->stream), "exchange",
                 "ncclRecv");
  }
  check_nccl(ncclGroupEnd(), "exchange", "ncclGroupEnd");
  wait("exchange");
}

void NcclCommunicator::do_barrier() {
  usable("barrier");
  const DeviceGuard guard(impl_->device);
  check_cuda(guard.status, "barrier", "cudaSetDevice");
  check_nccl(ncclAllReduce(impl_->scratch, impl_->scratch, 1, ncclUint8, ncclMax, impl_->comm, impl_->stream),
             "barrier", "ncclAllReduce");
  wait("barrier");
}

std::unique_ptr<Communicator> NcclCommunicator::do_split(int color, int key, const std::string& name) {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
  usable("split");
  const DeviceGuard guard(impl_->device);
  check_cuda(guard.status, "split", "cudaSetDevice");
  auto impl = std::make_unique<Impl>();
  impl->device = impl_->device;
  impl->stream = impl_->stream;
  impl->origin = impl_->origin;
  // A null config: the new communicator inherits this one's (blocking, not sharing resources).
  check_nccl(ncclCommSplit(impl_->comm, color, key, &impl->comm, nullptr), "split", "ncclCommSplit");
  if (!impl->comm) throw_internal("{}: {}: ncclCommSplit gave no communicator", impl_->origin, where("split"));
  impl->failed = true;  // until complete: a half-made communicator is aborted, not destroyed
  int rank = -1, size = -1;
  check_nccl(ncclCommUserRank(impl->comm, &rank), "split", "ncclCommUserRank");
  check_nccl(ncclCommCount(impl->comm, &size), "split", "ncclCommCount");
  // After the collective part: a failure here leaves the others in a working group, not in a hang.
  check_cuda(cudaMalloc(&impl->scratch, 16), "split", "cudaMalloc");
  impl->failed = false;
  return std::unique_ptr<Communicator>(new NcclCommunicator(std::move(impl), rank, size, name));
#else
  return new_ids_split(color, key, name);
#endif
}

std::unique_ptr<NcclCommunicator> NcclCommunicator::split_by_new_ids(int color, int key, const std::string& name) {
  if (color < 0) throw_internal("{}: negative color {}", where("split"), color);
  const CollectiveScope scope(CollectiveKind::kSplit, this->name(), 0);
  return new_ids_split(color, key, name);
}

// Over this communicator (device buffers): every rank's (color, key) is all-gathered, so each rank
// knows its new group, its rank there and the group's first member; the first members make the
// unique ids, which are all-gathered too; then each group calls ncclCommInitRank.
std::unique_ptr<NcclCommunicator> NcclCommunicator::new_ids_split(int color, int key, const std::string& name) {
  usable("split");
  const DeviceGuard guard(impl_->device);
  check_cuda(guard.status, "split", "cudaSetDevice");
  const size_t n = size_t(size());
  // Host -> device, all-gather of `bytes` per rank, device -> host.
  void* dev = nullptr;
  check_cuda(cudaMalloc(&dev, (n + 1) * sizeof(IdRecord)), "split", "cudaMalloc");
  struct Free {
    void* p;
    ~Free() { cudaFree(p); }
  } free_dev{dev};
  auto gather = [&](const void* mine, void* all, size_t bytes) {
    char* base = static_cast<char*>(dev);
    check_cuda(cudaMemcpyAsync(base + n * bytes, mine, bytes, cudaMemcpyHostToDevice, impl_->stream), "split",
               "cudaMemcpyAsync");
    check_nccl(ncclAllGather(base + n * bytes, base, bytes, ncclUint8, impl_->comm, impl_->stream), "split",
               "ncclAllGather");
    check_cuda(cudaMemcpyAsync(all, base, n * bytes, cudaMemcpyDeviceToHost, impl_->stream), "split",
               "cudaMemcpyAsync");
    wait("split");
  };
  const int64_t mine[2] = {color, key};
  std::vector<int64_t> all(2 * n);
  gather(mine, all.data(), sizeof mine);
  std::vector<int> members;  // this group's ranks in the new group, ordered by key then rank
  for (size_t q = 0; q < n; ++q)
    if (all[2 * q] == color) members.push_back(int(q));
  std::stable_sort(members.begin(), members.end(),
                   [&](int a, int b) { return all[2 * size_t(a) + 1] < all[2 * size_t(b) + 1]; });
  const int new_rank = int(std::find(members.begin(), members.end(), rank()) - members.begin());

  IdRecord rec;
  std::string id_error;
  if (new_rank == 0) {
    const ncclResult_t r = ncclGetUniqueId(&rec.id);
    if (r != ncclSuccess) id_error = fmt::format("ncclGetUniqueId failed: {}", nccl_error(r, nullptr));
    rec.ok = r == ncclSuccess;
  }
  std::vector<IdRecord> ids(n);
  gather(&rec, ids.data(), sizeof rec);
  const IdRecord& leader = ids[size_t(members[0])];
  if (!id_error.empty()) throw_internal("{}: {}: {}", impl_->origin, where("split"), id_error);
  if (!leader.ok)
    throw_internal("{}: {}: rank {} could not make the unique id of group '{}'", impl_->origin, where("split"),
                   members[0], name);

  auto impl = std::make_unique<Impl>();
  impl->device = impl_->device;
  impl->stream = impl_->stream;
  impl->origin = impl_->origin;
  const ncclResult_t r = ncclCommInitRank(&impl->comm, int(members.size()), leader.id, new_rank);
  if (r != ncclSuccess) {
    impl->comm = nullptr;
    throw_internal("{}: {}: ncclCommInitRank of group '{}' failed: {}", impl_->origin, where("split"), name,
                   nccl_error(r, nullptr));
  }
  impl->failed = true;  // until complete: a half-made communicator is aborted, not destroyed
  const cudaError_t e = cudaMalloc(&impl->scratch, 16);
  if (e != cudaSuccess) {
    impl->scratch = nullptr;
    throw_internal("{}: {}: cudaMalloc failed: {}", impl_->origin, where("split"), cudaGetErrorString(e));
  }
  impl->failed = false;
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(std::move(impl), new_rank, int(members.size()), name));
}

#else  // built without NCCL: the class exists so callers compile, but no instance can be made.

struct NcclCommunicator::Impl {};

namespace {
[[noreturn]] void no_nccl() {
  throw_input(
      "this moectl was built without NCCL (install the CUDA toolkit with NCCL and rebuild with -DMOE_CUDA=AUTO or "
      "ON)");
}
}  // namespace

bool NcclCommunicator::available() { return false; }
int NcclCommunicator::device_count() { return 0; }

// NOLINTNEXTLINE(performance-unnecessary-value-param): the real one's signature (it moves the name)
std::unique_ptr<NcclCommunicator> NcclCommunicator::create(Communicator&, int, void*, std::string) { no_nccl(); }

NcclCommunicator::NcclCommunicator(std::unique_ptr<Impl> impl, int rank, int size, std::string name)
    : Communicator(rank, size, std::move(name)), impl_(std::move(impl)) {}
NcclCommunicator::~NcclCommunicator() = default;

int NcclCommunicator::device() const { no_nccl(); }
void* NcclCommunicator::stream() const { no_nccl(); }
std::unique_ptr<NcclCommunicator> NcclCommunicator::split_by_new_ids(int, int, const std::string&) { no_nccl(); }

void NcclCommunicator::do_all_reduce(void*, int64_t, DataType, ReduceOp) { no_nccl(); }
void NcclCommunicator::do_reduce_scatter(const void*, void*, int64_t, DataType, ReduceOp) { no_nccl(); }
void NcclCommunicator::do_all_gather(const void*, void*, int64_t, DataType) { no_nccl(); }
void NcclCommunicator::do_all_to_all(const void*, std::span<const int64_t>, std::span<const int64_t>, void*,
                                     std::span<const int64_t>, std::span<const int64_t>, DataType) {
  no_nccl();
}
void NcclCommunicator::do_broadcast(void*, int64_t, DataType, int) { no_nccl(); }
void NcclCommunicator::do_send(const void*, int64_t, DataType, int, int) { no_nccl(); }
void NcclCommunicator::do_recv(void*, int64_t, DataType, int, int) { no_nccl(); }
void NcclCommunicator::do_exchange(std::span<const P2p>) { no_nccl(); }
void NcclCommunicator::do_barrier() { no_nccl(); }
std::unique_ptr<Communicator> NcclCommunicator::do_split(int, int, const std::string&) { no_nccl(); }
std::unique_ptr<Communicator::Request> NcclCommunicator::do_start_all_reduce(void*, int64_t, DataType, ReduceOp) {
  no_nccl();
}
std::unique_ptr<Communicator::Request> NcclCommunicator::do_start_reduce(void*, int64_t, DataType, ReduceOp, int) {
  no_nccl();
}
std::unique_ptr<Communicator::Request> NcclCommunicator::do_start_broadcast(void*, int64_t, DataType, int) {
  no_nccl();
}

#endif

}  // namespace moe::dist
