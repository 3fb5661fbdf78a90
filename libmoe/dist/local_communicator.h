// LocalCommunicator: the group of one process that every single-process run uses for all its
// process groups (dist/process_groups.h). Collectives are copies or no-ops; split() returns another
// group of one.
//
// send/recv to self: a send is queued (the bytes are copied, so the caller may reuse its buffer)
// and the next recv with the same tag takes it, as MPI's buffered self-send does. A recv with no
// queued send of that tag, or with another count or dtype, throws InternalError: with one process
// nothing could ever arrive, so waiting would hang.
#pragma once
#include <deque>
#include <vector>

#include "dist/communicator.h"

namespace moe::dist {

class LocalCommunicator final : public Communicator {
 public:
  explicit LocalCommunicator(std::string name = "world") : Communicator(0, 1, std::move(name)) {}

 private:
  void do_all_reduce(void*, int64_t, DataType, ReduceOp) override {}
  void do_reduce_scatter(const void* send, void* recv, int64_t count, DataType dtype, ReduceOp op) override;
  void do_all_gather(const void* send, void* recv, int64_t count, DataType dtype) override;
  void do_all_to_all(const void* send, std::span<const int64_t> send_counts, std::span<const int64_t> send_offsets,
                     void* recv, std::span<const int64_t> recv_counts, std::span<const int64_t> recv_offsets,
                     DataType dtype) override;
  void do_broadcast(void*, int64_t, DataType, int) override {}
  void do_send(const void* buf, int64_t count, DataType dtype, int peer, int tag) override;
  void do_recv(void* buf, int64_t count, DataType dtype, int peer, int tag) override;
  void do_barrier() override {}
  std::unique_ptr<Communicator> do_split(int color, int key, const std::string& name) override;

  struct Message {
    int tag;
    DataType dtype;
    int64_t count;
    std::vector<unsigned char> bytes;
  };
  std::deque<Message> queue_;  // sends to self not yet received, oldest first
};

}  // namespace moe::dist
