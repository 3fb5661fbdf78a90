#include "dist/local_communicator.h"

#include <cstring>

#include "core/error.h"

namespace moe::dist {
namespace {

// memmove: a caller may pass the same buffer for send and recv, which is harmless with one rank.
void copy(void* dst, const void* src, int64_t count, DataType dtype) {
  if (count > 0) std::memmove(dst, src, size_t(count) * data_type_size(dtype));
}

}  // namespace

void LocalCommunicator::do_reduce_scatter(const void* send, void* recv, int64_t count, DataType dtype, ReduceOp) {
  copy(recv, send, count, dtype);
}

void LocalCommunicator::do_all_gather(const void* send, void* recv, int64_t count, DataType dtype) {
  copy(recv, send, count, dtype);
}

void LocalCommunicator::do_all_to_all(const void* send, std::span<const int64_t> send_counts,
                                      std::span<const int64_t> send_offsets, void* recv,
                                      std::span<const int64_t> recv_counts, std::span<const int64_t> recv_offsets,
                                      DataType dtype) {
  if (send_counts[0] != recv_counts[0])
    throw_internal("{}: sends {} elements to itself but expects {}", where("all_to_all"), send_counts[0],
                   recv_counts[0]);
  const size_t es = data_type_size(dtype);
  copy(static_cast<char*>(recv) + size_t(recv_offsets[0]) * es,
       static_cast<const char*>(send) + size_t(send_offsets[0]) * es, send_counts[0], dtype);
}

void LocalCommunicator::do_send(const void* buf, int64_t count, DataType dtype, int, int tag) {
  Message m{tag, dtype, count, std::vector<unsigned char>(size_t(count) * data_type_size(dtype))};
  copy(m.bytes.data(), buf, count, dtype);
  queue_.push_back(std::move(m));
}

void LocalCommunicator::do_recv(void* buf, int64_t count, DataType dtype, int, int tag) {
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->tag != tag) continue;
    if (it->count != count || it->dtype != dtype)
      throw_internal("{}: the send with tag {} carried {} {} elements, the recv expects {} {}", where("recv"), tag,
                     it->count, data_type_name(it->dtype), count, data_type_name(dtype));
    copy(buf, it->bytes.data(), count, dtype);
    queue_.erase(it);
    return;
  }
  throw_internal("{}: no send to self with tag {} came first; with one process it never will", where("recv"), tag);
}

std::unique_ptr<Communicator> LocalCommunicator::do_split(int, int, const std::string& name) {
  return std::make_unique<LocalCommunicator>(name);
}

}  // namespace moe::dist
