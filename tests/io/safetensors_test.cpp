// safetensors round trips and every class of malformed file the reader must refuse with an
// InputError naming the file (never a crash), plus a replay of random byte flips.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/rng.h"
#include "io/safetensors.h"
#include "testutil.h"

using namespace moe;
using namespace moe::io;
using moe::testing::TempDir;

namespace {

Tensor filled(Shape s, DType dt, float base) {
  Tensor t(s, DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = base + float(i) * 0.25f;
  return t.to(dt);
}

std::string raw_file(const std::string& header_json, const std::string& data) {
  std::string out;
  uint64_t n = header_json.size();
  for (int i = 0; i < 8; ++i) out.push_back(char((n >> (8 * i)) & 0xff));
  out.append(header_json);
  out.append(data);
  return out;
}

std::string input_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an InputError";
  return "";
}

void expect_bad(const std::string& bytes, const std::string& needle) {
  TempDir d;
  const std::string p = d.file("bad.safetensors");
  moe::testing::write_file(p, bytes);
  std::string msg = input_error([&] { SafetensorsFile::open(p); });
  EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find(needle), std::string::npos) << msg;
}

}  // namespace

TEST(Safetensors, RoundTripAllDtypesAndMetadata) {
  TempDir d;
  const std::string p = d.file("m.safetensors");
  std::vector<std::pair<std::string, Tensor>> ts = {{"a", filled({2, 3}, DType::F32, 1)},
                                                     {"b", filled({5}, DType::BF16, -2)},
                                                     {"c", filled({1, 1, 3}, DType::F16, 0.5f)},
                                                     {"empty", Tensor({0, 4}, DType::F32)}};
  write_safetensors(p, ts, {{"format", "pt"}, {"note", "x"}});
  EXPECT_FALSE(std::filesystem::exists(p + ".tmp"));
  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->header().metadata.at("note"), "x");
  for (const auto& [name, t] : ts) {
    Tensor g = f->get(name);
    EXPECT_EQ(g.shape(), t.shape());
    EXPECT_EQ(g.dtype(), t.dtype());
    EXPECT_EQ(std::memcmp(g.raw(), t.raw(), t.nbytes()), 0) << name;
  }
  // data section starts 8-byte aligned
  EXPECT_EQ(f->info("a").begin % 8, 0u);
}

TEST(Safetensors, ShardedRoundTripWithIndex) {
  TempDir d;
  ShardedSafetensorsWriter w(d.path(), 40);
  for (int i = 0; i < 5; ++i) w.add("t" + std::to_string(i), filled({4}, DType::F32, float(i)));  // 16 B each
  w.finish();
  EXPECT_TRUE(std::filesystem::exists(d.file("model-00001-of-00003.safetensors")));
  EXPECT_TRUE(std::filesystem::exists(d.file("model.safetensors.index.json")));
  auto c = SafetensorsCheckpoint::open_dir(d.path());
  EXPECT_EQ(c.names().size(), 5u);
  EXPECT_EQ(c.get("t4").f32()[1], 4.25f);
  EXPECT_NE(c.file_of("t4").find("model-00003-of-00003"), std::string::npos);
}

TEST(Safetensors, SingleShardHasNoIndex) {
  TempDir d;
  ShardedSafetensorsWriter w(d.path(), 1000);
  w.add("x", filled({3}, DType::BF16, 1));
  w.finish();
  EXPECT_TRUE(std::filesystem::exists(d.file("model.safetensors")));
  EXPECT_FALSE(std::filesystem::exists(d.file("model.safetensors.index.json")));
}

TEST(SafetensorsBadInput, Truncated) { expect_bad("abc", "too short"); }
TEST(SafetensorsBadInput, HeaderLongerThanFile) {
  std::string f = raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "abcd");
  f[0] = char(0xff), f[1] = char(0x0f);
  expect_bad(f, "longer than the file");
}
TEST(SafetensorsBadInput, NotJson) { expect_bad(raw_file("{oops", ""), "not valid JSON"); }
TEST(SafetensorsBadInput, NotObject) { expect_bad(raw_file("[1,2]", ""), "JSON object"); }
TEST(SafetensorsBadInput, UnknownDtype) {
  expect_bad(raw_file(R"({"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}})", "abcd"), "unknown dtype 'Q4'");
}
TEST(SafetensorsBadInput, ShapeSizeMismatch) {
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,12]}})", std::string(12, 'x')),
             "needs 24");
}
TEST(SafetensorsBadInput, OutOfRange) {
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "abcd"), "past the end");
}
TEST(SafetensorsBadInput, Overlapping) {
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                      std::string(8, 'x')),
             "overlap");
}
TEST(SafetensorsBadInput, NegativeShapeAndBadOffsets) {
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "abcd"), "non-negative");
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", "abcd"), "end before");
}
TEST(SafetensorsBadInput, IntegerDtypeIsReadableHeaderButNotComputable) {
  TempDir d;
  moe::testing::write_file(d.file("i.safetensors"),
                           raw_file(R"({"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", std::string(8, 'x')));
  auto f = SafetensorsFile::open(d.file("i.safetensors"));
  EXPECT_NE(input_error([&] { f->get("a"); }).find("dtype I64"), std::string::npos);
}

TEST(SafetensorsBadInput, IndexProblems) {
  TempDir d;
  write_safetensors(d.file("s1.safetensors"), {{"a", filled({2}, DType::F32, 0)}, {"b", filled({2}, DType::F32, 0)}});
  moe::testing::write_file(d.file("model.safetensors.index.json"), R"({"weight_map": {"a": "s1.safetensors"}})");
  EXPECT_NE(input_error([&] { SafetensorsCheckpoint::open_dir(d.path()); }).find("'b' in 's1.safetensors' is missing from the index"),
            std::string::npos);
  moe::testing::write_file(d.file("model.safetensors.index.json"),
                           R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s1.safetensors"}})");
  EXPECT_NE(input_error([&] { SafetensorsCheckpoint::open_dir(d.path()); }).find("does not contain it"), std::string::npos);
  moe::testing::write_file(d.file("model.safetensors.index.json"), R"({"weight_map": {"a": "s2.safetensors"}})");
  EXPECT_NE(input_error([&] { SafetensorsCheckpoint::open_dir(d.path()); }).find("does not exist"), std::string::npos);
  moe::testing::write_file(d.file("model.safetensors.index.json"), R"({"nothing": 1})");
  EXPECT_NE(input_error([&] { SafetensorsCheckpoint::open_dir(d.path()); }).find("weight_map"), std::string::npos);
}

// Random byte flips of a valid file: the parser either accepts or throws InputError.
TEST(SafetensorsFuzzReplay, MutatedHeadersNeverCrash) {
  TempDir d;
  write_safetensors(d.file("ok.safetensors"),
                    {{"w", filled({3, 4}, DType::BF16, 1)}, {"b", filled({4}, DType::F32, 0)}});
  std::ifstream in(d.file("ok.safetensors"), std::ios::binary);
  std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Rng rng(99);
  int accepted = 0;
  for (int i = 0; i < 2000; ++i) {
    std::string m = good;
    int flips = 1 + int(rng.next() % 4);
    for (int k = 0; k < flips; ++k) m[rng.next() % std::min<size_t>(m.size(), 200)] = char(rng.next());
    if (rng.next() % 5 == 0) m.resize(rng.next() % m.size());
    try {
      auto h = parse_safetensors_header(reinterpret_cast<const unsigned char*>(m.data()), m.size(), "mut");
      for (const auto& t : h.tensors) ASSERT_LE(t.end, m.size());
      ++accepted;
    } catch (const InputError&) {
    }
  }
  EXPECT_LT(accepted, 2000);
}
