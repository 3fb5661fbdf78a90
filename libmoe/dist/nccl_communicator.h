// NcclCommunicator: the Communicator over NCCL, the GPU collective engine (DESIGN.md section 3),
// bootstrapped over another Communicator of the same processes (MPI under mpirun/srun). NCCL and
// CUDA types stay in the .cpp, so this header compiles whether or not moectl was built with NCCL
// (found beside the CUDA toolkit when MOE_CUDA is on); without it available() is false and create()
// throws InputError ("built without NCCL").
//
// Buffers are device memory of this communicator's device. Every call queues its NCCL work on the
// communicator's stream (after whatever the caller queued there before) and then waits for that
// stream before returning, so the blocking contract of communicator.h holds: when a call returns,
// the results are in the buffers and the buffers may be reused. While it waits it polls NCCL's
// asynchronous error state, so a failed peer or network surfaces as InternalError (the NCCL
// communicator is then aborted and every later call throws) rather than as a silent hang; a peer
// that merely stops is caught by the collective watchdog (collective_clock.h).
//
// Differences from the MPI communicator that callers must respect:
//  - send/recv have no tags: NCCL matches the sends and receives between two ranks in the order
//    they are posted (the tag is checked to be >= 0 and otherwise ignored). Zero-length sends and
//    receives move nothing and do not synchronise. A rank cannot send to or receive from itself.
//  - all_to_all copies this rank's own region on the device (cudaMemcpyAsync), so send_counts[rank]
//    must equal recv_counts[rank] locally.
//  - split() uses ncclCommSplit when the installed NCCL has it (2.18+), else split_by_new_ids().
// Communicators are meant to be created at start-up, every group in the same order on every rank
// (nccl_process_groups.h does that for a ParallelLayout): creating one mid-run, lazily, on some
// ranks only, is a known cause of hangs in large MoE jobs.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "dist/communicator.h"

namespace moe::dist {

class NcclCommunicator final : public Communicator {
 public:
  // Whether this build has NCCL: tests skip with a reason when it does not.
  static bool available();
  // CUDA devices this process can see (0 when built without NCCL, or without a driver).
  static int device_count();
  // A collective over `bootstrap` (every rank calls it, in the same order as its other collectives
  // on `bootstrap`): an NCCL communicator of the same ranks in the same order, on CUDA device
  // `device` of this process, queuing on `stream` (a cudaStream_t of that device; null is the legacy
  // default stream), named `name` in error messages. Rank 0 makes the NCCL unique id and broadcasts
  // it over `bootstrap`; each rank then calls ncclCommInitRank. A bad device or stream on any rank,
  // or rank 0 failing to make the id, throws InternalError on every rank before NCCL is entered.
  // `bootstrap` takes host buffers (an MPI or local communicator) and is not used after create()
  // returns; the stream must outlive the communicator.
  static std::unique_ptr<NcclCommunicator> create(Communicator& bootstrap, int device, void* stream, std::string name);
  ~NcclCommunicator() override;

  int device() const;
  void* stream() const;  // the cudaStream_t given to create()
  // A collective over this group, like split(), that makes each new group's NCCL unique id on its
  // first member and hands it to the others over this communicator, then calls ncclCommInitRank:
  // what split() falls back to when NCCL has no ncclCommSplit (public so tests run both ways).
  std::unique_ptr<NcclCommunicator> split_by_new_ids(int color, int key, const std::string& name);

 private:
  struct Impl;  // the ncclComm_t, device, stream and a device scratch word; defined in the .cpp
  NcclCommunicator(std::unique_ptr<Impl> impl, int rank, int size, std::string name);
  std::unique_ptr<NcclCommunicator> new_ids_split(int color, int key, const std::string& name);
  // Helpers of the .cpp (results as int: ncclResult_t and cudaError_t stay out of this header). The
  // checks throw InternalError naming the process, the rank, the group, `call` and the failed
  // function `fn`, after aborting the NCCL communicator; usable() throws once it was aborted.
  void check_nccl(int result, const char* call, const char* fn);
  void check_cuda(int result, const char* call, const char* fn);
  void usable(const char* call) const;
  void wait(const char* call);  // until the stream is idle, watching NCCL's asynchronous errors
  // The non-blocking calls queue their work like the blocking ones and return a request that
  // waits for an event recorded after it (the stream's later work is not waited for).
  class Started;
  // `enqueue` (returning its ncclResult_t) queued on the device, unless `count` is 0.
  std::unique_ptr<Request> started(const char* call, const char* fn, int64_t count,
                                   const std::function<int()>& enqueue);
  bool event_done(void* event, const char* call);  // cudaEventQuery, errors checked
  std::unique_ptr<Request> do_start_all_reduce(void* buf, int64_t count, DataType dtype, ReduceOp op) override;
  std::unique_ptr<Request> do_start_reduce(void* buf, int64_t count, DataType dtype, ReduceOp op, int root) override;
  std::unique_ptr<Request> do_start_broadcast(void* buf, int64_t count, DataType dtype, int root) override;
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

  std::unique_ptr<Impl> impl_;
};

}  // namespace moe::dist
