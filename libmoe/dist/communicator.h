// Communicator: the one interface through which engine code talks to other ranks (DESIGN.md
// section 3). Model code holds a Communicator& per process group (dist/process_groups.h) and never
// names MPI or NCCL; with one process every group is a LocalCommunicator and each call is a copy
// or a no-op, so the same code runs single-process and distributed.
//
// Contract for every collective (all_reduce ... barrier, split):
//  - every rank of the group calls it, with the same dtype, count (and op/root), and all ranks call
//    the group's collectives in the same order; a rank that skips one hangs or corrupts the others.
//  - buffers are host memory for the MPI and local implementations (device memory for NCCL), sized
//    as each call says in elements of `dtype`; send and recv buffers do not overlap unless a call
//    says in-place.
//  - calls on one communicator are not concurrent (one thread at a time).
// Failure: arguments that break the contract on this rank (wrong span sizes, a peer or root outside
// the group, negative counts) and failures of the underlying library throw InternalError naming the
// rank, the group and the call; the group is then unusable and the job should end.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace moe::dist {

// Element types that cross ranks: activations and gradients (f32, bf16), token counts and ids
// (i32, i64), raw bytes (u8, for serialised objects), step statistics summed exactly (f64).
enum class DataType : uint8_t { kF32, kBF16, kI32, kI64, kU8, kF64 };
size_t data_type_size(DataType t);
const char* data_type_name(DataType t);

// bf16 sums are computed in f32 and rounded to nearest even after each pairwise step, so they can
// depend on the reduction order; the max of a NaN is unspecified: detect non-finite values with a sum.
enum class ReduceOp : uint8_t { kSum, kMax };
const char* reduce_op_name(ReduceOp op);

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // What the group is ("world", "tp", "ep", ...): error messages name it.
  const std::string& name() const { return name_; }

  // In place: `buf` holds `count` elements on every rank; afterwards every rank holds the
  // element-wise reduction.
  void all_reduce(void* buf, int64_t count, DataType dtype, ReduceOp op);
  // `send` holds size() x count elements (chunk r for rank r); `recv` gets `count` elements: the
  // reduction of every rank's chunk rank(). Equal chunks only.
  void reduce_scatter(const void* send, void* recv, int64_t count, DataType dtype, ReduceOp op);
  // `send` holds `count` elements; `recv` gets size() x count: chunk r from rank r. Equal chunks.
  void all_gather(const void* send, void* recv, int64_t count, DataType dtype);
  // Uneven exchange (MoE token dispatch): send_counts[r] elements starting at element
  // send_offsets[r] of `send` go to rank r, which receives them at element recv_offsets[rank()] of
  // its `recv`, recv_counts[rank()] of them. All four spans have size() entries; counts may be 0;
  // send_counts[r] on this rank must equal recv_counts[this rank] on rank r (exchange the counts
  // first, e.g. with an all_to_all of one i64 each). Regions in `recv` must not overlap.
  void all_to_all(const void* send, std::span<const int64_t> send_counts, std::span<const int64_t> send_offsets,
                  void* recv, std::span<const int64_t> recv_counts, std::span<const int64_t> recv_offsets,
                  DataType dtype);
  // In place: root's `count` elements are copied into every rank's `buf`.
  void broadcast(void* buf, int64_t count, DataType dtype, int root);
  // Point to point (pipeline activations). A send is matched by the recv of the same peer and tag,
  // in order; both sides give the same count. Blocking: the peer must post the matching call, so two
  // ranks that both send first may deadlock for large messages - order sends and receives by rank.
  void send(const void* buf, int64_t count, DataType dtype, int peer, int tag = 0);
  void recv(void* buf, int64_t count, DataType dtype, int peer, int tag = 0);
  // A batch of sends and receives started together and all finished on return (Megatron's
  // batch_isend_irecv): no send waits for the batch's own receives, so neighbours that each post
  // a send and a receive to the other in one batch cannot deadlock. Matching is as for send/recv.
  struct P2p {
    bool send;  // else a receive into buf
    void* buf;
    int64_t count;
    DataType dtype;
    int peer, tag;
  };
  void exchange(std::span<const P2p> ops);
  void barrier();
  // Collective over this group: ranks giving the same `color` form a new group, ordered by `key`
  // (then by rank here). Creating every group at start-up, in the same order on every rank, is
  // what keeps creation from hanging mid-run.
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name);

  // Non-blocking collectives (Megatron's --overlap_grad_reduce / --overlap_param_gather): started
  // now, finished by the Request's wait(); the buffer must not be touched, nor the request
  // dropped unwaited, before then. Every rank starts the same ones in the same order, like the
  // blocking calls, and may start several before waiting. MPI advances them only inside its
  // calls, so a caller overlapping them with work calls test() between pieces of that work.
  class Request {
   public:
    virtual ~Request() = default;
    Request(const Request&) = delete;
    Request& operator=(const Request&) = delete;
    // Whether it finished (advancing it).
    virtual bool test() = 0;
    // Until it finished; timed, and watched for a timeout, as the blocking call.
    void wait();

   protected:
    // `timed` false: the work was done (and timed) when it started.
    explicit Request(bool timed = true) : timed_(timed) {}
    virtual void do_wait() = 0;

   private:
    friend class Communicator;
    bool timed_;
    uint8_t kind_ = 0;  // CollectiveKind, for the clock
    std::string group_;
    int64_t bytes_ = 0;
  };
  // all_reduce(), started.
  std::unique_ptr<Request> start_all_reduce(void* buf, int64_t count, DataType dtype, ReduceOp op);
  // In place: root's `buf` gets the reduction of every rank's; the others' `buf` is unspecified
  // afterwards (the reduce-to-owner of a distributed optimizer's shard).
  std::unique_ptr<Request> start_reduce(void* buf, int64_t count, DataType dtype, ReduceOp op, int root);
  // broadcast(), started.
  std::unique_ptr<Request> start_broadcast(void* buf, int64_t count, DataType dtype, int root);

 protected:
  Communicator(int rank, int size, std::string name) : rank_(rank), size_(size), name_(std::move(name)) {}
  // "rank 3 of 'ep' (4 ranks), all_to_all": the prefix of every error message.
  std::string where(const char* call) const;

  // The implementations: arguments already checked against the contract above.
  virtual void do_all_reduce(void* buf, int64_t count, DataType dtype, ReduceOp op) = 0;
  virtual void do_reduce_scatter(const void* send, void* recv, int64_t count, DataType dtype, ReduceOp op) = 0;
  virtual void do_all_gather(const void* send, void* recv, int64_t count, DataType dtype) = 0;
  virtual void do_all_to_all(const void* send, std::span<const int64_t> send_counts,
                             std::span<const int64_t> send_offsets, void* recv, std::span<const int64_t> recv_counts,
                             std::span<const int64_t> recv_offsets, DataType dtype) = 0;
  virtual void do_broadcast(void* buf, int64_t count, DataType dtype, int root) = 0;
  virtual void do_send(const void* buf, int64_t count, DataType dtype, int peer, int tag) = 0;
  virtual void do_recv(void* buf, int64_t count, DataType dtype, int peer, int tag) = 0;
  // Default: the sends, then the receives, one at a time (right where sends never wait: one process).
  virtual void do_exchange(std::span<const P2p> ops);
  virtual void do_barrier() = 0;
  virtual std::unique_ptr<Communicator> do_split(int color, int key, const std::string& name) = 0;
  // Default: the blocking call, done before returning (a reduce as an all-reduce); a finished
  // request is returned. MPI and NCCL start the work and return.
  virtual std::unique_ptr<Request> do_start_all_reduce(void* buf, int64_t count, DataType dtype, ReduceOp op);
  virtual std::unique_ptr<Request> do_start_reduce(void* buf, int64_t count, DataType dtype, ReduceOp op, int root);
  virtual std::unique_ptr<Request> do_start_broadcast(void* buf, int64_t count, DataType dtype, int root);

 private:
  void check_count(const char* call, int64_t count) const;
  void check_peer(const char* call, const char* what, int peer) const;
  int rank_, size_;
  std::string name_;
};

// Root's `s` on every rank of `c` (a collective: its length, then its bytes).
std::string broadcast_string(Communicator& c, std::string s, int root);

}  // namespace moe::dist
