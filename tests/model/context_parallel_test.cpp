// Context parallelism's split (model/context_parallel.h): Megatron's causal load balancing, rank r
// holding chunks r and 2 CP - 1 - r of each sequence padded to a multiple of 2 CP, the padding
// cut off. Every token of a micro-batch is on exactly one rank, in position order per sequence.
#include <gtest/gtest.h>

#include <vector>

#include "model/context_parallel.h"

namespace moe::model {
namespace {

TEST(ContextParallel, ChunksOfThePaddedSequence) {
  // 10 tokens over CP2: padded to 12, chunks of 3; rank 0 holds chunks 0 and 3 (cut at 10).
  auto r0 = cp_chunks(10, 2, 0), r1 = cp_chunks(10, 2, 1);
  EXPECT_EQ(r0[0].begin, 0);
  EXPECT_EQ(r0[0].end, 3);
  EXPECT_EQ(r0[1].begin, 9);
  EXPECT_EQ(r0[1].end, 10);
  EXPECT_EQ(r1[0].begin, 3);
  EXPECT_EQ(r1[0].end, 6);
  EXPECT_EQ(r1[1].begin, 6);
  EXPECT_EQ(r1[1].end, 9);
  // A multiple of 2 CP: equal halves, as Megatron's get_batch_on_this_cp_rank.
  auto e = cp_chunks(16, 2, 1);
  EXPECT_EQ(e[0].begin, 4);
  EXPECT_EQ(e[0].end, 8);
  EXPECT_EQ(e[1].begin, 8);
  EXPECT_EQ(e[1].end, 12);
  // Shorter than 2 CP: the last ranks' chunks are empty.
  auto s = cp_chunks(1, 2, 1);
  EXPECT_EQ(s[0].begin, s[0].end);
  EXPECT_EQ(s[1].begin, s[1].end);
}

TEST(ContextParallel, EveryRowOnExactlyOneRank) {
  const std::vector<int32_t> cu = {0, 1, 8, 21, 21, 64, 97};
  for (int cp : {2, 3, 4}) {
    std::vector<int> seen(size_t(cu.back()), 0);
    int64_t total = 0;
    for (int r = 0; r < cp; ++r) {
      std::vector<int64_t> rows(size_t(cu.back()));
      std::vector<int32_t> local(cu.size());
      const int64_t n = cp_local_rows(cu, cp, r, rows.data(), local.data());
      EXPECT_EQ(n, cp_local_rows(cu, cp, r, nullptr, nullptr));
      EXPECT_EQ(local.front(), 0);
      EXPECT_EQ(local.back(), n);
      for (size_t s = 0; s + 1 < cu.size(); ++s)
        for (int32_t i = local[s]; i < local[s + 1]; ++i) {
          const int64_t row = rows[size_t(i)];
          EXPECT_TRUE(row >= cu[s] && row < cu[s + 1]) << "cp " << cp << " rank " << r << " row " << row;
          if (i > local[s]) {
            EXPECT_LT(rows[size_t(i - 1)], row);  // in position order
          }
          ++seen[size_t(row)];
        }
      total += n;
    }
    EXPECT_EQ(total, cu.back());
    for (size_t t = 0; t < seen.size(); ++t) EXPECT_EQ(seen[t], 1) << "cp " << cp << " row " << t;
  }
}

}  // namespace
}  // namespace moe::model
