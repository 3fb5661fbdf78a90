// LocalCommunicator: every collective of a group of one is a copy or a no-op that leaves the
// values a one-rank reduction would; send/recv to self pair in order; misuse names the call.
#include <gtest/gtest.h>

#include <numeric>

#include "core/error.h"
#include "dist/local_communicator.h"

namespace moe::dist {
namespace {

std::string internal_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const InternalError& e) {
    return e.what();
  }
  return "";
}

TEST(dist_local_communicator, CollectivesAreCopiesOrNoOps) {
  LocalCommunicator c("tp");
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.size(), 1);
  std::vector<float> x{1.5f, -2.f, 3.f};
  c.all_reduce(x.data(), 3, DataType::kF32, ReduceOp::kSum);
  c.all_reduce(x.data(), 3, DataType::kF32, ReduceOp::kMax);
  c.broadcast(x.data(), 3, DataType::kF32, 0);
  EXPECT_EQ(x, (std::vector<float>{1.5f, -2.f, 3.f}));
  std::vector<int64_t> in{7, 8}, out(2, 0);
  c.reduce_scatter(in.data(), out.data(), 2, DataType::kI64, ReduceOp::kSum);
  EXPECT_EQ(out, in);
  std::vector<uint16_t> b{1, 2, 3}, bo(3);
  c.all_gather(b.data(), bo.data(), 3, DataType::kBF16);
  EXPECT_EQ(bo, b);
  c.barrier();
}

TEST(dist_local_communicator, StartedCollectivesAreDoneAtOnce) {
  LocalCommunicator c("dp");
  std::vector<float> x{1.5f, -2.f, 3.f};
  auto a = c.start_all_reduce(x.data(), 3, DataType::kF32, ReduceOp::kSum);
  auto r = c.start_reduce(x.data(), 3, DataType::kF32, ReduceOp::kSum, 0);
  auto b = c.start_broadcast(x.data(), 3, DataType::kF32, 0);
  EXPECT_TRUE(a->test() && r->test() && b->test());
  b->wait(), r->wait(), a->wait();
  EXPECT_EQ(x, (std::vector<float>{1.5f, -2.f, 3.f}));
  EXPECT_NE(internal_error([&] { c.start_reduce(x.data(), 3, DataType::kF32, ReduceOp::kSum, 1); }).find("root 1"),
            std::string::npos);
}

TEST(dist_local_communicator, AllToAllCopiesTheOwnSlice) {
  LocalCommunicator c;
  std::vector<int32_t> send(10), recv(10, -1);
  std::iota(send.begin(), send.end(), 0);
  const int64_t sc[] = {4}, so[] = {3}, rc[] = {4}, ro[] = {5};
  c.all_to_all(send.data(), sc, so, recv.data(), rc, ro, DataType::kI32);
  EXPECT_EQ(recv, (std::vector<int32_t>{-1, -1, -1, -1, -1, 3, 4, 5, 6, -1}));
  const int64_t zero[] = {0};
  c.all_to_all(send.data(), zero, zero, recv.data(), zero, zero, DataType::kI32);  // zero-length: nothing moves
  EXPECT_EQ(recv[0], -1);
  const int64_t two[] = {2, 2};
  EXPECT_NE(internal_error([&] {
              c.all_to_all(send.data(), two, two, recv.data(), two, two, DataType::kI32);
            }).find("need 1 entries each"),
            std::string::npos);
  const int64_t three[] = {3};
  EXPECT_NE(internal_error([&] {
              c.all_to_all(send.data(), sc, so, recv.data(), three, ro, DataType::kI32);
            }).find("sends 4 elements to itself but expects 3"),
            std::string::npos);
}

TEST(dist_local_communicator, SendToSelfPairsWithRecvInOrder) {
  LocalCommunicator c("pp");
  float a[2] = {1, 2}, b[2] = {3, 4}, r[2] = {};
  c.send(a, 2, DataType::kF32, 0, 5);
  c.send(b, 2, DataType::kF32, 0, 6);
  a[0] = 100;  // the send copied the bytes
  c.recv(r, 2, DataType::kF32, 0, 6);
  EXPECT_EQ(r[0], 3);
  c.recv(r, 2, DataType::kF32, 0, 5);
  EXPECT_EQ(r[0], 1);
  const std::string none = internal_error([&] { c.recv(r, 2, DataType::kF32, 0, 5); });
  EXPECT_NE(none.find("rank 0 of 'pp' (1 ranks), recv: no send to self with tag 5"), std::string::npos) << none;
  c.send(a, 2, DataType::kF32, 0, 1);
  EXPECT_NE(internal_error([&] { c.recv(r, 1, DataType::kF32, 0, 1); }).find("carried 2 f32 elements"),
            std::string::npos);
}

TEST(dist_local_communicator, ArgumentsOutsideTheGroupThrow) {
  LocalCommunicator c("ep");
  float x = 0;
  EXPECT_NE(internal_error([&] { c.broadcast(&x, 1, DataType::kF32, 1); }).find("broadcast: root 1 is not a rank"),
            std::string::npos);
  EXPECT_NE(internal_error([&] { c.send(&x, 1, DataType::kF32, 2); }).find("send: peer 2"), std::string::npos);
  EXPECT_NE(internal_error([&] { c.all_reduce(&x, -1, DataType::kF32, ReduceOp::kSum); }).find("negative count"),
            std::string::npos);
  auto sub = c.split(3, 0, "etp");
  EXPECT_EQ(sub->size(), 1);
  EXPECT_EQ(sub->name(), "etp");
}

}  // namespace
}  // namespace moe::dist
