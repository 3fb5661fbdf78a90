#include "dist/communicator.h"

#include <fmt/format.h>

#include "core/error.h"
#include "dist/collective_clock.h"

namespace moe::dist {

size_t data_type_size(DataType t) {
  switch (t) {
    case DataType::kF32: return 4;
    case DataType::kBF16: return 2;
    case DataType::kI32: return 4;
    case DataType::kI64: return 8;
    case DataType::kU8: return 1;
    case DataType::kF64: return 8;
  }
  return 1;
}

const char* data_type_name(DataType t) {
  switch (t) {
    case DataType::kF32: return "f32";
    case DataType::kBF16: return "bf16";
    case DataType::kI32: return "i32";
    case DataType::kI64: return "i64";
    case DataType::kU8: return "u8";
    case DataType::kF64: return "f64";
  }
  return "?";
}

const char* reduce_op_name(ReduceOp op) { return op == ReduceOp::kSum ? "sum" : "max"; }

std::string Communicator::where(const char* call) const {
  return fmt::format("rank {} of '{}' ({} ranks), {}", rank_, name_, size_, call);
}

void Communicator::check_count(const char* call, int64_t count) const {
  if (count < 0) throw_internal("{}: negative count {}", where(call), count);
}

void Communicator::check_peer(const char* call, const char* what, int peer) const {
  if (peer < 0 || peer >= size_) throw_internal("{}: {} {} is not a rank of the group", where(call), what, peer);
}

void Communicator::all_reduce(void* buf, int64_t count, DataType dtype, ReduceOp op) {
  check_count("all_reduce", count);
  const CollectiveScope scope(CollectiveKind::kAllReduce, name_, count * int64_t(data_type_size(dtype)));
  do_all_reduce(buf, count, dtype, op);
}

void Communicator::reduce_scatter(const void* send, void* recv, int64_t count, DataType dtype, ReduceOp op) {
  check_count("reduce_scatter", count);
  const CollectiveScope scope(CollectiveKind::kReduceScatter, name_, count * size_ * int64_t(data_type_size(dtype)));
  do_reduce_scatter(send, recv, count, dtype, op);
}

void Communicator::all_gather(const void* send, void* recv, int64_t count, DataType dtype) {
  check_count("all_gather", count);
  const CollectiveScope scope(CollectiveKind::kAllGather, name_, count * size_ * int64_t(data_type_size(dtype)));
  do_all_gather(send, recv, count, dtype);
}

void Communicator::all_to_all(const void* send, std::span<const int64_t> send_counts,
                              std::span<const int64_t> send_offsets, void* recv, std::span<const int64_t> recv_counts,
                              std::span<const int64_t> recv_offsets, DataType dtype) {
  const size_t n = size_t(size_);
  if (send_counts.size() != n || send_offsets.size() != n || recv_counts.size() != n || recv_offsets.size() != n)
    throw_internal("{}: counts and offsets need {} entries each, got send {}/{} recv {}/{}", where("all_to_all"), n,
                   send_counts.size(), send_offsets.size(), recv_counts.size(), recv_offsets.size());
  for (size_t r = 0; r < n; ++r)
    if (send_counts[r] < 0 || send_offsets[r] < 0 || recv_counts[r] < 0 || recv_offsets[r] < 0)
      throw_internal("{}: negative count or offset for rank {}", where("all_to_all"), r);
  int64_t sent = 0;
  for (int64_t c : send_counts) sent += c;
  const CollectiveScope scope(CollectiveKind::kAllToAll, name_, sent * int64_t(data_type_size(dtype)));
  do_all_to_all(send, send_counts, send_offsets, recv, recv_counts, recv_offsets, dtype);
}

void Communicator::broadcast(void* buf, int64_t count, DataType dtype, int root) {
  check_count("broadcast", count);
  check_peer("broadcast", "root", root);
  const CollectiveScope scope(CollectiveKind::kBroadcast, name_, count * int64_t(data_type_size(dtype)));
  do_broadcast(buf, count, dtype, root);
}

void Communicator::send(const void* buf, int64_t count, DataType dtype, int peer, int tag) {
  check_count("send", count);
  check_peer("send", "peer", peer);
  if (tag < 0) throw_internal("{}: negative tag {}", where("send"), tag);
  const CollectiveScope scope(CollectiveKind::kSendRecv, name_, count * int64_t(data_type_size(dtype)));
  do_send(buf, count, dtype, peer, tag);
}

void Communicator::recv(void* buf, int64_t count, DataType dtype, int peer, int tag) {
  check_count("recv", count);
  check_peer("recv", "peer", peer);
  if (tag < 0) throw_internal("{}: negative tag {}", where("recv"), tag);
  const CollectiveScope scope(CollectiveKind::kSendRecv, name_, count * int64_t(data_type_size(dtype)));
  do_recv(buf, count, dtype, peer, tag);
}

void Communicator::exchange(std::span<const P2p> ops) {
  int64_t bytes = 0;
  for (const P2p& o : ops) {
    check_count(o.send ? "exchange (send)" : "exchange (recv)", o.count);
    check_peer("exchange", "peer", o.peer);
    if (o.tag < 0) throw_internal("{}: negative tag {}", where("exchange"), o.tag);
    bytes += o.count * int64_t(data_type_size(o.dtype));
  }
  if (ops.empty()) return;
  const CollectiveScope scope(CollectiveKind::kSendRecv, name_, bytes);
  do_exchange(ops);
}

void Communicator::do_exchange(std::span<const P2p> ops) {
  for (const P2p& o : ops)
    if (o.send) do_send(o.buf, o.count, o.dtype, o.peer, o.tag);
  for (const P2p& o : ops)
    if (!o.send) do_recv(o.buf, o.count, o.dtype, o.peer, o.tag);
}

void Communicator::barrier() {
  const CollectiveScope scope(CollectiveKind::kBarrier, name_, 0);
  do_barrier();
}

std::unique_ptr<Communicator> Communicator::split(int color, int key, const std::string& name) {
  if (color < 0) throw_internal("{}: negative color {}", where("split"), color);
  const CollectiveScope scope(CollectiveKind::kSplit, name_, 0);
  return do_split(color, key, name);
}

namespace {

// What the default start_*() return: the work was done by the blocking call.
class DoneRequest final : public Communicator::Request {
 public:
  DoneRequest() : Request(false) {}
  bool test() override { return true; }

 private:
  void do_wait() override {}
};

}  // namespace

void Communicator::Request::wait() {
  if (!timed_) return do_wait();
  const CollectiveScope scope(CollectiveKind(kind_), group_, bytes_);
  do_wait();
}

std::unique_ptr<Communicator::Request> Communicator::start_all_reduce(void* buf, int64_t count, DataType dtype,
                                                                      ReduceOp op) {
  check_count("start_all_reduce", count);
  auto r = do_start_all_reduce(buf, count, dtype, op);
  r->kind_ = uint8_t(CollectiveKind::kAllReduce), r->group_ = name_, r->bytes_ = count * int64_t(data_type_size(dtype));
  return r;
}

std::unique_ptr<Communicator::Request> Communicator::start_reduce(void* buf, int64_t count, DataType dtype, ReduceOp op,
                                                                  int root) {
  check_count("start_reduce", count);
  check_peer("start_reduce", "root", root);
  auto r = do_start_reduce(buf, count, dtype, op, root);
  r->kind_ = uint8_t(CollectiveKind::kReduce), r->group_ = name_, r->bytes_ = count * int64_t(data_type_size(dtype));
  return r;
}

std::unique_ptr<Communicator::Request> Communicator::start_broadcast(void* buf, int64_t count, DataType dtype,
                                                                     int root) {
  check_count("start_broadcast", count);
  check_peer("start_broadcast", "root", root);
  auto r = do_start_broadcast(buf, count, dtype, root);
  r->kind_ = uint8_t(CollectiveKind::kBroadcast), r->group_ = name_, r->bytes_ = count * int64_t(data_type_size(dtype));
  return r;
}

std::unique_ptr<Communicator::Request> Communicator::do_start_all_reduce(void* buf, int64_t count, DataType dtype,
                                                                         ReduceOp op) {
  all_reduce(buf, count, dtype, op);
  return std::make_unique<DoneRequest>();
}

std::unique_ptr<Communicator::Request> Communicator::do_start_reduce(void* buf, int64_t count, DataType dtype,
                                                                     ReduceOp op, int) {
  all_reduce(buf, count, dtype, op);
  return std::make_unique<DoneRequest>();
}

std::unique_ptr<Communicator::Request> Communicator::do_start_broadcast(void* buf, int64_t count, DataType dtype,
                                                                        int root) {
  broadcast(buf, count, dtype, root);
  return std::make_unique<DoneRequest>();
}

std::string broadcast_string(Communicator& c, std::string s, int root) {
  int64_t n = int64_t(s.size());
  c.broadcast(&n, 1, DataType::kI64, root);
  s.resize(size_t(n));
  c.broadcast(s.data(), n, DataType::kU8, root);
  return s;
}

}  // namespace moe::dist
