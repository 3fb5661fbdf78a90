// MpiCommunicator: the Communicator over MPI (OpenMPI from Debian) for CPU processes launched by
// mpirun or srun; host buffers only. MPI types stay in the .cpp, so this header compiles whether
// or not moectl was built with MPI (MOE_MPI); without it, world() throws InputError.
//
// MPI is initialised by the first world() (thread level SERIALIZED: any thread may call, one at a
// time) and finalised at process exit. Every MPI error is returned, not fatal, and becomes an
// InternalError naming the world rank, the group and the MPI call, so the caller can report it
// before the job ends. Counts above 2^31 - 1 elements are split into several MPI calls where the
// call allows it (all_reduce, broadcast, send/recv); elsewhere (and in the non-blocking calls)
// they throw InternalError.
#pragma once
#include "dist/communicator.h"

namespace moe::dist {

class MpiCommunicator final : public Communicator {
 public:
  // Whether this build has MPI: tests skip with a reason when it does not.
  static bool available();
  // The communicator of every process of the job (MPI_COMM_WORLD), named "world". Each call returns
  // a new handle on the same group.
  static std::unique_ptr<MpiCommunicator> world();
  // Ends every process of the job with `code` (MPI_Abort) when MPI is running; else exits. The way
  // out of a rank's error: returning normally would leave the other ranks waiting in a collective.
  [[noreturn]] static void abort_job(int code);
  ~MpiCommunicator() override;

 private:
  struct Impl;  // the MPI communicator and this process's world rank; defined in the .cpp
  MpiCommunicator(std::unique_ptr<Impl> impl, int rank, int size, std::string name);
  void do_all_reduce(void* buf, int64_t count, DataType dtype, ReduceOp op) override;
  void do_reduce_scatter(const void* send, void* recv, int64_t count, DataType dtype, ReduceOp op) override;
  void do_all_gather(const void* send, void* recv, int64_t count, DataType dtype) override;
  void do_all_to_all(const void* send, std::span<const int64_t> send_counts, std::span<const int64_t> send_offsets,
                     void* recv, std::span<const int64_t> recv_counts, std::span<const int64_t> recv_offsets,
                     DataType dtype) override;
  void do_broadcast(void* buf, int64_t count, DataType dtype, int root) override;
  void do_send(const void* buf, int64_t count, DataType dtype, int peer, int tag) override;
  void do_recv(void* buf, int64_t count, DataType dtype, int peer, int tag) override;
  void do_exchange(std::span<const P2p> ops) override;
  void do_barrier() override;
  std::unique_ptr<Communicator> do_split(int color, int key, const std::string& name) override;
  std::unique_ptr<Request> do_start_all_reduce(void* buf, int64_t count, DataType dtype, ReduceOp op) override;
  std::unique_ptr<Request> do_start_reduce(void* buf, int64_t count, DataType dtype, ReduceOp op, int root) override;
  std::unique_ptr<Request> do_start_broadcast(void* buf, int64_t count, DataType dtype, int root) override;

  std::unique_ptr<Impl> impl_;
};

}  // namespace moe::dist
