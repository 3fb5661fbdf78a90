// The workspace arena: aligned bump carving, stack release, a measuring arena that counts the
// same bytes, growth only while empty, and an overflow that names itself instead of writing past.
#include <gtest/gtest.h>

#include <cstdint>

#include "core/arena.h"
#include "core/error.h"

namespace moe {
namespace {

TEST(Arena, CarvesAlignedSpansAndReleasesInStackOrder) {
  Arena a;
  a.reserve(1000);
  EXPECT_GE(a.capacity(), 1024u);  // whole pages
  const auto x = a.take<float>(3);
  const auto y = a.take<int64_t>(9);
  EXPECT_EQ(x.size(), 3u);
  EXPECT_EQ(y.size(), 9u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(x.data()) % Arena::kAlign, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(y.data()) % Arena::kAlign, 0u);
  EXPECT_EQ(reinterpret_cast<std::byte*>(y.data()) - reinterpret_cast<std::byte*>(x.data()), 64);
  EXPECT_EQ(a.used(), 64u + 128u);
  {
    ArenaScope s(a);
    const auto z = a.take<float>(100);
    EXPECT_EQ(reinterpret_cast<std::byte*>(z.data()) - reinterpret_cast<std::byte*>(x.data()), 192);
    EXPECT_EQ(a.used(), 192u + 448u);
  }
  EXPECT_EQ(a.used(), 192u);
  EXPECT_EQ(a.high_water(), 640u);
  // Released space is carved again at the same place.
  const auto z = a.take<float>(1);
  EXPECT_EQ(reinterpret_cast<std::byte*>(z.data()) - reinterpret_cast<std::byte*>(x.data()), 192);
}

TEST(Arena, MeasuringCountsTheSameBytes) {
  Arena m = Arena::measuring();
  m.take<float>(3);
  const size_t mark = m.mark();
  m.take<double>(1000);
  m.release(mark);
  m.take<int32_t>(17);
  EXPECT_EQ(m.high_water(), 64u + 8000u);
  EXPECT_EQ(m.used(), 64u + 128u);
  EXPECT_EQ(m.take<float>(5).data(), nullptr);
}

TEST(Arena, GrowsOnlyWhileEmptyAndOverflowIsAnInternalError) {
  Arena a;
  a.reserve(128);
  const size_t cap = a.capacity();  // whole pages
  a.take<std::byte>(cap - 64);
  a.take<float>(16);  // the last 64 bytes
  EXPECT_THROW(a.take<float>(1), InternalError);
  EXPECT_EQ(a.used(), cap);
  EXPECT_THROW(a.reserve(2 * cap), InternalError);  // something is carved
  a.reset();
  a.reserve(64);  // smaller: kept as is
  EXPECT_EQ(a.capacity(), cap);
  a.reserve(2 * cap);
  EXPECT_EQ(a.capacity(), 2 * cap);
  const auto all = a.take<float>(2 * cap / sizeof(float));
  all[all.size() - 1] = 1.0f;  // mapped and writable to the end
}

}  // namespace
}  // namespace moe
