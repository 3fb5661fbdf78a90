#include "dist/mpi_communicator.h"

#include <cstdlib>

#include "core/error.h"

#ifdef MOE_HAVE_MPI
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <mutex>
#include <vector>

#include "core/dtype.h"
#endif

namespace moe::dist {

#ifdef MOE_HAVE_MPI

struct MpiCommunicator::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  int world_rank = 0;  // error messages name the process, not only its rank in the group
};

namespace {

// MPI counts are ints (OpenMPI 4 has no MPI-4 large-count calls); calls that can be cut into
// independent pieces are, at this many elements each.
constexpr int64_t kMaxChunk = int64_t(1) << 30;

MPI_Op g_bf16_sum = MPI_OP_NULL, g_bf16_max = MPI_OP_NULL;

// MPI has no bf16: it travels as 16-bit words and these reduce them in f32, rounding back each step.
void bf16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = f32_to_bf16(bf16_to_f32(a[i]) + bf16_to_f32(b[i]));
}

void bf16_max(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i)
    if (bf16_to_f32(a[i]) > bf16_to_f32(b[i])) b[i] = a[i];
}

void finalize_at_exit() {
  int done = 0;
  MPI_Finalized(&done);
  if (!done) MPI_Finalize();
}

void ensure_initialized() {
  static std::once_flag once;
  std::call_once(once, [] {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;
      if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
        throw_internal("MPI_Init_thread failed (is this process started by mpirun or srun?)");
      std::atexit(finalize_at_exit);
    }
    MPI_Op_create(bf16_sum, 1, &g_bf16_sum);
    MPI_Op_create(bf16_max, 1, &g_bf16_max);
  });
}

MPI_Datatype mpi_type(DataType t) {
  switch (t) {
    case DataType::kF32: return MPI_FLOAT;
    case DataType::kBF16: return MPI_UINT16_T;
    case DataType::kI32: return MPI_INT32_T;
    case DataType::kI64: return MPI_INT64_T;
    case DataType::kU8: return MPI_UINT8_T;
    case DataType::kF64: return MPI_DOUBLE;
  }
  return MPI_BYTE;
}

MPI_Op mpi_op(ReduceOp op, DataType t) {
  if (t == DataType::kBF16) return op == ReduceOp::kSum ? g_bf16_sum : g_bf16_max;
  return op == ReduceOp::kSum ? MPI_SUM : MPI_MAX;
}

void check(int rc, int world_rank, const std::string& where, const char* fn) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw_internal("world rank {}: {}: {} failed: {}", world_rank, where, fn, std::string(msg, size_t(len)));
}

int as_int(int64_t v, int world_rank, const std::string& where) {
  if (v > INT_MAX) throw_internal("world rank {}: {}: {} elements exceed MPI's int counts", world_rank, where, v);
  return int(v);
}

// A started MPI collective (MPI_I*): finished by MPI_Test / MPI_Wait, which also advance it.
class MpiRequest final : public Communicator::Request {
 public:
  MpiRequest(int world_rank, std::string where) : world_rank_(world_rank), where_(std::move(where)) {}
  ~MpiRequest() override {
    if (req_ != MPI_REQUEST_NULL) MPI_Request_free(&req_);  // only when an error unwinds
  }
  MPI_Request* handle() { return &req_; }
  bool test() override {
    int done = 0;
    check(MPI_Test(&req_, &done, MPI_STATUS_IGNORE), world_rank_, where_, "MPI_Test");
    return done != 0;
  }

 private:
  void do_wait() override { check(MPI_Wait(&req_, MPI_STATUS_IGNORE), world_rank_, where_, "MPI_Wait"); }
  MPI_Request req_ = MPI_REQUEST_NULL;
  int world_rank_;
  std::string where_;
};

}  // namespace

bool MpiCommunicator::available() { return true; }

void MpiCommunicator::abort_job(int code) {
  int inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  if (inited && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::world() {
  ensure_initialized();
  auto impl = std::make_unique<Impl>();
  MPI_Comm_rank(MPI_COMM_WORLD, &impl->world_rank);
  // A private copy, so no other library's messages on MPI_COMM_WORLD can match ours.
  check(MPI_Comm_dup(MPI_COMM_WORLD, &impl->comm), impl->world_rank, "world", "MPI_Comm_dup");
  MPI_Comm_set_errhandler(impl->comm, MPI_ERRORS_RETURN);
  int rank = 0, size = 0;
  MPI_Comm_rank(impl->comm, &rank);
  MPI_Comm_size(impl->comm, &size);
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(std::move(impl), rank, size, "world"));
}

MpiCommunicator::MpiCommunicator(std::unique_ptr<Impl> impl, int rank, int size, std::string name)
    : Communicator(rank, size, std::move(name)), impl_(std::move(impl)) {}

MpiCommunicator::~MpiCommunicator() {
  int done = 0;
  MPI_Finalized(&done);
  if (!done && impl_->comm != MPI_COMM_NULL) MPI_Comm_free(&impl_->comm);
}

void MpiCommunicator::do_all_reduce(void* buf, int64_t count, DataType dtype, ReduceOp op) {
  char* p = static_cast<char*>(buf);
  const size_t es = data_type_size(dtype);
  for (int64_t done = 0; done < count; done += kMaxChunk) {
    const int n = int(std::min(kMaxChunk, count - done));
    check(MPI_Allreduce(MPI_IN_PLACE, p + size_t(done) * es, n, mpi_type(dtype), mpi_op(op, dtype), impl_->comm),
          impl_->world_rank, where("all_reduce"), "MPI_Allreduce");
  }
}

void MpiCommunicator::do_reduce_scatter(const void* send, void* recv, int64_t count, DataType dtype, ReduceOp op) {
  const int n = as_int(count * size(), impl_->world_rank, where("reduce_scatter")) / size();
  check(MPI_Reduce_scatter_block(send, recv, n, mpi_type(dtype), mpi_op(op, dtype), impl_->comm), impl_->world_rank,
        where("reduce_scatter"), "MPI_Reduce_scatter_block");
}

void MpiCommunicator::do_all_gather(const void* send, void* recv, int64_t count, DataType dtype) {
  const int n = as_int(count * size(), impl_->world_rank, where("all_gather")) / size();
  check(MPI_Allgather(send, n, mpi_type(dtype), recv, n, mpi_type(dtype), impl_->comm), impl_->world_rank,
        where("all_gather"), "MPI_Allgather");
}

void MpiCommunicator::do_all_to_all(const void* send, std::span<const int64_t> send_counts,
                                    std::span<const int64_t> send_offsets, void* recv,
                                    std::span<const int64_t> recv_counts, std::span<const int64_t> recv_offsets,
                                    DataType dtype) {
  const std::string w = where("all_to_all");
  const size_t n = static_cast<size_t>(size());
  std::vector<int> sc(n), so(n), rc(n), ro(n);
  for (size_t r = 0; r < sc.size(); ++r) {
    sc[r] = as_int(send_counts[r], impl_->world_rank, w), so[r] = as_int(send_offsets[r], impl_->world_rank, w);
    rc[r] = as_int(recv_counts[r], impl_->world_rank, w), ro[r] = as_int(recv_offsets[r], impl_->world_rank, w);
  }
  const MPI_Datatype t = mpi_type(dtype);
  check(MPI_Alltoallv(send, sc.data(), so.data(), t, recv, rc.data(), ro.data(), t, impl_->comm), impl_->world_rank, w,
        "MPI_Alltoallv");
}

void MpiCommunicator::do_broadcast(void* buf, int64_t count, DataType dtype, int root) {
  char* p = static_cast<char*>(buf);
  const size_t es = data_type_size(dtype);
  for (int64_t done = 0; done < count; done += kMaxChunk) {
    const int n = int(std::min(kMaxChunk, count - done));
    check(MPI_Bcast(p + size_t(done) * es, n, mpi_type(dtype), root, impl_->comm), impl_->world_rank,
          where("broadcast"), "MPI_Bcast");
  }
}

void MpiCommunicator::do_send(const void* buf, int64_t count, DataType dtype, int peer, int tag) {
  const char* p = static_cast<const char*>(buf);
  const size_t es = data_type_size(dtype);
  int64_t done = 0;
  do {  // at least one message, so a zero-length send still matches its recv
    const int n = int(std::min(kMaxChunk, count - done));
    check(MPI_Send(p + size_t(done) * es, n, mpi_type(dtype), peer, tag, impl_->comm), impl_->world_rank, where("send"),
          "MPI_Send");
    done += n;
  } while (done < count);
}

void MpiCommunicator::do_recv(void* buf, int64_t count, DataType dtype, int peer, int tag) {
  char* p = static_cast<char*>(buf);
  const size_t es = data_type_size(dtype);
  int64_t done = 0;
  do {
    const int n = int(std::min(kMaxChunk, count - done));
    MPI_Status st;
    check(MPI_Recv(p + size_t(done) * es, n, mpi_type(dtype), peer, tag, impl_->comm, &st), impl_->world_rank,
          where("recv"), "MPI_Recv");
    int got = 0;
    MPI_Get_count(&st, mpi_type(dtype), &got);
    if (got != n)
      throw_internal("world rank {}: {}: rank {} sent {} elements, {} expected", impl_->world_rank, where("recv"), peer,
                     got, n);
    done += n;
  } while (done < count);
}

void MpiCommunicator::do_exchange(std::span<const P2p> ops) {
  // Every transfer posted at once (non-blocking), then all awaited.
  std::vector<MPI_Request> reqs(ops.size());
  for (size_t i = 0; i < ops.size(); ++i) {
    const P2p& o = ops[i];
    if (o.count > kMaxChunk)
      throw_internal("world rank {}: {}: {} elements in one transfer (at most {})", impl_->world_rank,
                     where("exchange"), o.count, kMaxChunk);
    const int n = int(o.count);
    if (o.send)
      check(MPI_Isend(o.buf, n, mpi_type(o.dtype), o.peer, o.tag, impl_->comm, &reqs[i]), impl_->world_rank,
            where("exchange"), "MPI_Isend");
    else
      check(MPI_Irecv(o.buf, n, mpi_type(o.dtype), o.peer, o.tag, impl_->comm, &reqs[i]), impl_->world_rank,
            where("exchange"), "MPI_Irecv");
  }
  std::vector<MPI_Status> st(ops.size());
  check(MPI_Waitall(int(reqs.size()), reqs.data(), st.data()), impl_->world_rank, where("exchange"), "MPI_Waitall");
  for (size_t i = 0; i < ops.size(); ++i) {
    if (ops[i].send) continue;
    int got = 0;
    MPI_Get_count(&st[i], mpi_type(ops[i].dtype), &got);
    if (got != ops[i].count)
      throw_internal("world rank {}: {}: rank {} sent {} elements, {} expected", impl_->world_rank, where("exchange"),
                     ops[i].peer, got, ops[i].count);
  }
}

void MpiCommunicator::do_barrier() {
  check(MPI_Barrier(impl_->comm), impl_->world_rank, where("barrier"), "MPI_Barrier");
}

std::unique_ptr<Communicator> MpiCommunicator::do_split(int color, int key, const std::string& name) {
  auto impl = std::make_unique<Impl>();
  impl->world_rank = impl_->world_rank;
  check(MPI_Comm_split(impl_->comm, color, key, &impl->comm), impl_->world_rank, where("split"), "MPI_Comm_split");
  MPI_Comm_set_errhandler(impl->comm, MPI_ERRORS_RETURN);
  int rank = 0, size = 0;
  MPI_Comm_rank(impl->comm, &rank);
  MPI_Comm_size(impl->comm, &size);
  return std::unique_ptr<Communicator>(new MpiCommunicator(std::move(impl), rank, size, name));
}

std::unique_ptr<Communicator::Request> MpiCommunicator::do_start_all_reduce(void* buf, int64_t count, DataType dtype,
                                                                            ReduceOp op) {
  auto r = std::make_unique<MpiRequest>(impl_->world_rank, where("start_all_reduce"));
  const int n = as_int(count, impl_->world_rank, where("start_all_reduce"));
  check(MPI_Iallreduce(MPI_IN_PLACE, buf, n, mpi_type(dtype), mpi_op(op, dtype), impl_->comm, r->handle()),
        impl_->world_rank, where("start_all_reduce"), "MPI_Iallreduce");
  return r;
}
std::unique_ptr<Communicator::Request> MpiCommunicator::do_start_reduce(void* buf, int64_t count, DataType dtype,
                                                                        ReduceOp op, int root) {
  auto r = std::make_unique<MpiRequest>(impl_->world_rank, where("start_reduce"));
  const int n = as_int(count, impl_->world_rank, where("start_reduce"));
  // The root reduces into its own buffer; the others only send theirs.
  const bool mine = rank() == root;
  check(MPI_Ireduce(mine ? MPI_IN_PLACE : buf, mine ? buf : nullptr, n, mpi_type(dtype), mpi_op(op, dtype), root,
                    impl_->comm, r->handle()),
        impl_->world_rank, where("start_reduce"), "MPI_Ireduce");
  return r;
}
std::unique_ptr<Communicator::Request> MpiCommunicator::do_start_broadcast(void* buf, int64_t count, DataType dtype,
                                                                           int root) {
  auto r = std::make_unique<MpiRequest>(impl_->world_rank, where("start_broadcast"));
  const int n = as_int(count, impl_->world_rank, where("start_broadcast"));
  check(MPI_Ibcast(buf, n, mpi_type(dtype), root, impl_->comm, r->handle()), impl_->world_rank,
        where("start_broadcast"), "MPI_Ibcast");
  return r;
}
#else  // built without MPI: the class exists so callers compile, but no instance can be made.

struct MpiCommunicator::Impl {};

bool MpiCommunicator::available() { return false; }

void MpiCommunicator::abort_job(int code) { std::_Exit(code); }

std::unique_ptr<MpiCommunicator> MpiCommunicator::world() {
  throw_input("this moectl was built without MPI (install libopenmpi-dev and rebuild with -DMOE_MPI=AUTO or ON)");
}

MpiCommunicator::MpiCommunicator(std::unique_ptr<Impl> impl, int rank, int size, std::string name)
    : Communicator(rank, size, std::move(name)), impl_(std::move(impl)) {}
MpiCommunicator::~MpiCommunicator() = default;

void MpiCommunicator::do_all_reduce(void*, int64_t, DataType, ReduceOp) { throw_internal("no MPI"); }
void MpiCommunicator::do_reduce_scatter(const void*, void*, int64_t, DataType, ReduceOp) { throw_internal("no MPI"); }
void MpiCommunicator::do_all_gather(const void*, void*, int64_t, DataType) { throw_internal("no MPI"); }
void MpiCommunicator::do_all_to_all(const void*, std::span<const int64_t>, std::span<const int64_t>, void*,
                                    std::span<const int64_t>, std::span<const int64_t>, DataType) {
  throw_internal("no MPI");
}
void MpiCommunicator::do_broadcast(void*, int64_t, DataType, int) { throw_internal("no MPI"); }
void MpiCommunicator::do_send(const void*, int64_t, DataType, int, int) { throw_internal("no MPI"); }
void MpiCommunicator::do_recv(void*, int64_t, DataType, int, int) { throw_internal("no MPI"); }
void MpiCommunicator::do_exchange(std::span<const P2p>) { throw_internal("no MPI"); }
void MpiCommunicator::do_barrier() { throw_internal("no MPI"); }
std::unique_ptr<Communicator> MpiCommunicator::do_split(int, int, const std::string&) { throw_internal("no MPI"); }

#endif

}  // namespace moe::dist
