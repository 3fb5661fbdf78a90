// Padding-free micro-batches: segment boundaries and positions, best-fit-decreasing packing
// (every sample once per epoch, rows within max_length), deterministic order by (seed, epoch),
// and a saved position that resumes the exact same batches.
#include <gtest/gtest.h>

#include <map>
#include <numeric>

#include <nlohmann/json.hpp>

#include "testutil.h"
#include "train/data_loader.h"

namespace moe::train {
namespace {

// Sample i has length lens[i]; every token and label is i, so a segment names its sample.
std::vector<Sample> samples_of(const std::vector<int>& lens) {
  std::vector<Sample> out;
  for (size_t i = 0; i < lens.size(); ++i) {
    Sample s;
    s.tokens.assign(static_cast<size_t>(lens[i]), int32_t(i));
    s.labels.assign(static_cast<size_t>(lens[i]), int32_t(i));
    s.labels.back() = -100;
    out.push_back(s);
  }
  return out;
}

std::vector<int> varied(int n) {
  std::vector<int> lens;
  lens.reserve(size_t(n));
  for (int i = 0; i < n; ++i) lens.push_back(3 + (i * 7) % 20);
  return lens;
}

// Checks a micro-batch's layout and returns the samples of its segments, in order.
std::vector<int32_t> segments(const MicroBatch& mb, const std::vector<Sample>& s) {
  EXPECT_EQ(mb.labels.size(), mb.tokens.size());
  EXPECT_EQ(mb.position_ids.size(), mb.tokens.size());
  EXPECT_EQ(mb.cu_seqlens.front(), 0);
  EXPECT_EQ(size_t(mb.cu_seqlens.back()), mb.tokens.size());
  std::vector<int32_t> out;
  for (size_t q = 0; q + 1 < mb.cu_seqlens.size(); ++q) {
    const int32_t b = mb.cu_seqlens[q], e = mb.cu_seqlens[q + 1];
    const int32_t id = mb.tokens[size_t(b)];
    out.push_back(id);
    EXPECT_EQ(size_t(e - b), s[size_t(id)].tokens.size());
    for (int32_t t = b; t < e; ++t) {
      EXPECT_EQ(mb.tokens[size_t(t)], id);  // a segment is exactly one sample
      EXPECT_EQ(mb.position_ids[size_t(t)], t - b);
      EXPECT_EQ(mb.labels[size_t(t)], s[size_t(id)].labels[size_t(t - b)]);
    }
  }
  return out;
}

TEST(DataLoader, WithoutPackingEachSampleIsOneSegment) {
  const auto s = samples_of({4, 6, 5, 3, 7});
  DataLoader dl(s, 2, false, 8, 3);
  EXPECT_EQ(dl.rows_per_epoch(), 5);
  EXPECT_EQ(dl.samples(), 5);
  std::map<int32_t, int> seen;
  for (int b = 0; b < 2; ++b) {
    const MicroBatch mb = dl.next();
    EXPECT_EQ(mb.rows, 2);
    const auto seg = segments(mb, s);
    ASSERT_EQ(seg.size(), 2u);
    int64_t loss = 0;
    for (int32_t id : seg) ++seen[id], loss += int64_t(s[size_t(id)].tokens.size()) - 1;
    EXPECT_EQ(mb.loss_tokens(), loss);
  }
  // The fifth sample ends the epoch; the micro-batch goes on into the next one.
  const MicroBatch last = dl.next();
  EXPECT_EQ(last.rows, 2);
  ++seen[segments(last, s)[0]];
  EXPECT_EQ(seen.size(), 5u);
  EXPECT_EQ(dl.position().epoch, 1);
  EXPECT_EQ(dl.position().index, 1);
}

TEST(DataLoader, PackingKeepsEverySampleOnceAndRowsWithinMaxLength) {
  const auto s = samples_of(varied(60));
  const int max_length = 40;
  DataLoader dl(s, 1, true, max_length, 7);
  int64_t total = 0;
  for (const auto& x : s) total += int64_t(x.tokens.size());
  // Best-fit decreasing packs these well: within one row of the lower bound.
  EXPECT_LE(dl.rows_per_epoch(), (total + max_length - 1) / max_length + 1);
  for (int64_t r = 0; r < dl.rows_per_epoch(); ++r) {
    size_t len = 0;
    for (int32_t i : dl.row(r)) len += s[size_t(i)].tokens.size();
    EXPECT_LE(len, size_t(max_length)) << r;
  }
  for (int epoch = 0; epoch < 2; ++epoch) {
    std::map<int32_t, int> seen;
    int64_t rows = 0;
    while (rows < dl.rows_per_epoch()) {
      MicroBatch mb;
      dl.next(mb);
      rows += mb.rows;
      for (int32_t id : segments(mb, s)) ++seen[id];
      EXPECT_LE(mb.tokens.size(), size_t(max_length));
    }
    ASSERT_EQ(seen.size(), 60u) << epoch;
    for (auto [id, n] : seen) EXPECT_EQ(n, 1) << id;
  }
}

TEST(DataLoader, BestFitDecreasingFillsRowsExactly) {
  // 6+4, 6+4, 5+5, 7+3 fit rows of 10 exactly: four rows.
  const auto s = samples_of({4, 6, 5, 7, 3, 5, 6, 4});
  DataLoader dl(s, 1, true, 10, 1);
  EXPECT_EQ(dl.rows_per_epoch(), 4);
  for (int r = 0; r < 4; ++r) EXPECT_EQ(dl.next().tokens.size(), 10u);
}

TEST(DataLoader, OrderIsAFunctionOfSeedAndEpoch) {
  const auto s = samples_of(varied(12));
  auto epoch_order = [&](uint64_t seed, int epoch) {
    DataLoader dl(s, 1, false, 64, seed);
    dl.restore({epoch, 0, seed});
    std::vector<int32_t> order;
    order.reserve(12);
    for (int i = 0; i < 12; ++i) order.push_back(segments(dl.next(), s)[0]);
    return order;
  };
  EXPECT_EQ(epoch_order(5, 0), epoch_order(5, 0));
  EXPECT_NE(epoch_order(5, 0), epoch_order(5, 1));  // reshuffled every epoch
  EXPECT_NE(epoch_order(5, 0), epoch_order(6, 0));
  // Epoch 1 read straight through equals epoch 1 restored.
  DataLoader dl(s, 1, false, 64, 5);
  for (int i = 0; i < 12; ++i) dl.next();
  std::vector<int32_t> straight;
  straight.reserve(12);
  for (int i = 0; i < 12; ++i) straight.push_back(segments(dl.next(), s)[0]);
  EXPECT_EQ(straight, epoch_order(5, 1));
  // Evaluation keeps the given order.
  DataLoader ev(s, 4, false, 64, 5, false);
  std::vector<int32_t> in_order;
  for (int i = 0; i < 3; ++i)
    for (int32_t id : segments(ev.next(), s)) in_order.push_back(id);
  std::vector<int32_t> want(12);
  std::iota(want.begin(), want.end(), 0);
  EXPECT_EQ(in_order, want);
}

TEST(DataLoader, SavedPositionResumesTheSameBatches) {
  const auto s = samples_of(varied(30));
  for (bool packing : {false, true}) {
    DataLoader a(s, 2, packing, 32, 11);
    for (int i = 0; i < 7; ++i) a.next();  // mid-epoch
    const nlohmann::json saved = to_json(a.position());
    EXPECT_EQ(saved.at("seed"), 11);
    DataLoader b(s, 2, packing, 32, 11);
    b.restore(loader_position_from_json(nlohmann::json::parse(saved.dump())));
    EXPECT_EQ(b.position().epoch, a.position().epoch);
    EXPECT_EQ(b.position().index, a.position().index);
    for (int i = 0; i < 40; ++i) {  // across epoch boundaries
      const MicroBatch x = a.next(), y = b.next();
      ASSERT_EQ(x.tokens, y.tokens) << packing << " " << i;
      ASSERT_EQ(x.labels, y.labels);
      ASSERT_EQ(x.cu_seqlens, y.cu_seqlens);
      ASSERT_EQ(x.position_ids, y.position_ids);
    }
  }
  // A position from before the seed was recorded (seed 0) restores too.
  DataLoader c(s, 2, false, 32, 11), d(s, 2, false, 32, 11);
  for (int i = 0; i < 3; ++i) c.next();
  d.restore(loader_position_from_json(nlohmann::json{{"epoch", 0}, {"index", 6}}));
  EXPECT_EQ(c.next().tokens, d.next().tokens);
  EXPECT_NE(testing::input_error([] {
              loader_position_from_json(nlohmann::json{{"epoch", -1}, {"index", 0}});
            }).find("epoch"),
            std::string::npos);
  EXPECT_NE(testing::input_error([] {
              loader_position_from_json(nlohmann::json{{"epoch", 0}});
            }).find("index"),
            std::string::npos);
}

TEST(DataLoader, ReusedMicroBatchEqualsAFreshOne) {
  const auto s = samples_of(varied(9));
  DataLoader a(s, 2, false, 64, 4), b(s, 2, false, 64, 4);
  MicroBatch reused;
  for (int i = 0; i < 10; ++i) {
    a.next(reused);
    const MicroBatch fresh = b.next();
    EXPECT_EQ(reused.tokens, fresh.tokens);
    EXPECT_EQ(reused.labels, fresh.labels);
    EXPECT_EQ(reused.position_ids, fresh.position_ids);
    EXPECT_EQ(reused.cu_seqlens, fresh.cu_seqlens);
    EXPECT_EQ(reused.rows, fresh.rows);
  }
}

}  // namespace
}  // namespace moe::train
