// safetensors: round trips (single file and shards), the exact bytes the writer emits, and
// every class of malformed file or directory the readers must refuse with an InputError that
// names the file and the problem (never a crash), plus a replay of mutated headers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <utility>

#include "core/mapped_file.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "testutil.h"

using namespace moe;
using namespace moe::io;
using moe::testing::input_error;
using moe::testing::TempDir;
namespace fs = std::filesystem;

namespace {

// base, base + 0.25, base + 0.5, ... (exact in bf16 and f16 for the sizes used here)
Tensor filled(Shape s, DType dt, float base) {
  Tensor t(std::move(s), DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = base + float(i) * 0.25f;
  return t.to(dt);
}

std::vector<float> values(const Tensor& t) {
  Tensor f = t.to(DType::F32);
  return std::vector<float>(f.f32(), f.f32() + f.numel());
}

// A safetensors file from a literal header (no padding) and data section.
std::string raw_file(const std::string& header_json, const std::string& data) {
  std::string out;
  const uint64_t n = header_json.size();
  for (int i = 0; i < 8; ++i) out.push_back(char((n >> (8 * i)) & 0xff));
  return out + header_json + data;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

#define EXPECT_CONTAINS(hay, needle) EXPECT_NE((hay).find(needle), std::string::npos) << "message: " << (hay)

// Writes `bytes` as bad.safetensors, opens it, and checks that the error names the file,
// is one line, and contains `needle`.
void expect_bad(const std::string& bytes, const std::string& needle) {
  TempDir d;
  const std::string p = d.file("bad.safetensors");
  moe::testing::write_file(p, bytes);
  const std::string msg = input_error([&] { SafetensorsFile::open(p); });
  EXPECT_EQ(msg.rfind(p + ": ", 0), 0u) << "message must start with the path: " << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_CONTAINS(msg, needle);
}

std::vector<std::string> dir_listing(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

// ---------------------------------------------------------------- single-file round trips

TEST(Safetensors, RoundTripAllDtypesAndMetadata) {
  TempDir d;
  const std::string p = d.file("m.safetensors");
  std::vector<std::pair<std::string, Tensor>> ts = {{"z.weight", filled({2, 3}, DType::F32, 1)},
                                                    {"b", filled({5}, DType::BF16, -2)},
                                                    {"c", filled({1, 1, 3}, DType::F16, 0.5f)},
                                                    {"empty", Tensor({0, 4}, DType::F32)}};
  write_safetensors(p, ts, {{"format", "pt"}, {"note", "x"}});
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"note", "x"}}));
  EXPECT_EQ(f->names(), (std::vector<std::string>{"z.weight", "b", "c", "empty"}));  // file order, not sorted
  for (const auto& [name, t] : ts) {
    SCOPED_TRACE(name);
    Tensor g = f->get(name);
    EXPECT_EQ(g.shape(), t.shape());
    EXPECT_EQ(g.dtype(), t.dtype());
    EXPECT_EQ(values(g), values(t));
    EXPECT_EQ(f->info(name).end - f->info(name).begin, t.nbytes());
  }
  EXPECT_EQ(values(f->get("b")), (std::vector<float>{-2, -1.75f, -1.5f, -1.25f, -1}));
  EXPECT_EQ(f->info("c").dtype, "F16");
  EXPECT_EQ(f->info("z.weight").begin % 8, 0u);  // data section starts 8-byte aligned
}

TEST(Safetensors, ScalarsEmptyTensorsAndEmptyFile) {
  TempDir d;
  const std::string p = d.file("s.safetensors");
  Tensor scalar({}, DType::F32);
  scalar.f32()[0] = 3.5f;
  write_safetensors(p,
                    {{"scalar", scalar},
                     {"e_bf16", Tensor({0}, DType::BF16)},
                     {"e_f16", Tensor({3, 0}, DType::F16)},
                     {"one", filled({1}, DType::BF16, 7)}},
                    {});
  auto f = SafetensorsFile::open(p);
  EXPECT_TRUE(f->metadata().empty());
  EXPECT_EQ(f->get("scalar").shape(), Shape{});
  EXPECT_EQ(values(f->get("scalar")), std::vector<float>{3.5f});
  EXPECT_EQ(f->get("e_bf16").numel(), 0);
  EXPECT_EQ(f->get("e_f16").shape(), (Shape{3, 0}));
  EXPECT_EQ(values(f->get("one")), std::vector<float>{7});

  const std::string empty = d.file("empty.safetensors");
  write_safetensors(empty, {});
  auto e = SafetensorsFile::open(empty);
  EXPECT_TRUE(e->names().empty());
  EXPECT_EQ(e->metadata().at("format"), "pt");
}

// The exact bytes: u64 LE length, compact JSON (__metadata__ first, tensors in order),
// spaces up to a multiple of 8, then the raw little-endian data.
TEST(Safetensors, WriterEmitsTheReferenceLayout) {
  TempDir d;
  const std::string p = d.file("x.safetensors");
  Tensor a({2}, DType::F32);
  a.f32()[0] = 1.0f, a.f32()[1] = -2.0f;
  write_safetensors(p, {{"a", a}, {"b", Tensor({1}, DType::BF16)}});
  const std::string bytes = read_bytes(p);
  std::string json = R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                     R"("b":{"dtype":"BF16","shape":[1],"data_offsets":[8,10]}})";
  json.append((8 - json.size() % 8) % 8, ' ');
  const float data[2] = {1.0f, -2.0f};
  std::string expect = raw_file(json, std::string(reinterpret_cast<const char*>(data), 8) + std::string(2, '\0'));
  EXPECT_EQ(bytes, expect);
}

TEST(Safetensors, ParserReportsEveryDtypeWithAbsoluteOffsets) {
  const std::string header =
      R"({"z":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},"a":{"dtype":"BOOL","shape":[3],"data_offsets":[16,19]},)"
      R"("__metadata__":{"k":"v"},"f8":{"dtype":"F8_E4M3","shape":[1,1],"data_offsets":[19,20]}})";
  const std::string file = raw_file(header, std::string(20, 'x'));
  auto h = parse_safetensors_header(reinterpret_cast<const unsigned char*>(file.data()), file.size(), "mem");
  ASSERT_EQ(h.tensors.size(), 3u);
  EXPECT_EQ(h.tensors[0].name, "z");  // header order
  EXPECT_EQ(h.tensors[0].dtype, "I64");
  EXPECT_EQ(h.tensors[0].begin, 8 + header.size());
  EXPECT_EQ(h.tensors[0].end, 8 + header.size() + 16);
  EXPECT_EQ(h.tensors[1].name, "a");
  EXPECT_EQ(h.tensors[1].shape, std::vector<int64_t>{3});
  EXPECT_EQ(h.tensors[2].name, "f8");
  EXPECT_EQ(h.tensors[2].end, file.size());
  EXPECT_EQ(h.metadata.at("k"), "v");
  EXPECT_EQ(safetensors_dtype_size("F64"), 8);
  EXPECT_EQ(safetensors_dtype_size("Q4_0"), 0);
}

TEST(Safetensors, TensorsBorrowTheMappingAndOutliveTheFileObject) {
  TempDir d;
  const std::string p = d.file("m.safetensors");
  write_safetensors(p, {{"w", filled({4, 4}, DType::BF16, 1)}});
  Tensor t;
  {
    auto f = SafetensorsFile::open(p);
    t = f->get("w");
    EXPECT_EQ(f->get("w").raw(), t.raw());  // the same bytes in the mapping, not copies
  }
  EXPECT_EQ(values(t), values(filled({4, 4}, DType::BF16, 1)));
}

// Files from writers that do not pad may place an F32 at an odd offset: get() copies it.
TEST(Safetensors, MisalignedDataIsCopiedAligned) {
  TempDir d;
  std::string header =
      R"({"b":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]},"f":{"dtype":"F32","shape":[2],"data_offsets":[2,10]}})";
  while ((8 + header.size() + 2) % 4 != 2) header += ' ';  // puts "f" 2 bytes past a 4-byte boundary
  const float f[2] = {1.5f, -3.0f};
  std::string data = std::string("\x80\x3f", 2) + std::string(reinterpret_cast<const char*>(f), 8);
  moe::testing::write_file(d.file("u.safetensors"), raw_file(header, data));
  auto file = SafetensorsFile::open(d.file("u.safetensors"));
  ASSERT_NE(file->info("f").begin % 4, 0u) << "test needs a misaligned tensor";
  Tensor t = file->get("f");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 4, 0u);
  EXPECT_EQ(values(t), (std::vector<float>{1.5f, -3.0f}));
  EXPECT_EQ(values(file->get("b")), std::vector<float>{1.0f});
}

TEST(Safetensors, WriterRefusesBadNamesAndLeavesNoFile) {
  TempDir d;
  const std::string p = d.file("w.safetensors");
  std::string msg = input_error([&] {
    write_safetensors(p, {{"a", Tensor({1}, DType::F32)}, {"a", Tensor({2}, DType::F32)}});
  });
  EXPECT_CONTAINS(msg, p + ": tensor 'a' is given twice");
  msg = input_error([&] { write_safetensors(p, {{"__metadata__", Tensor({1}, DType::F32)}}); });
  EXPECT_CONTAINS(msg, "reserved");
  msg = input_error([&] { write_safetensors(p, {{"", Tensor({1}, DType::F32)}}); });
  EXPECT_CONTAINS(msg, "empty name");
  EXPECT_TRUE(dir_listing(d.path()).empty());
  const std::string nowhere = d.file("no/such/dir/w.safetensors");
  msg = input_error([&] { write_safetensors(nowhere, {{"a", Tensor({1}, DType::F32)}}); });
  EXPECT_CONTAINS(msg, nowhere + ".tmp: cannot create");
}

// ---------------------------------------------------------------- shards and directories

TEST(Safetensors, ShardedRoundTripWithIndex) {
  TempDir d;
  ShardedSafetensorsWriter w(d.path(), 40);
  for (int i = 0; i < 5; ++i) w.add("t" + std::to_string(i), filled({4}, DType::F32, float(i)));  // 16 B each
  w.finish();
  const std::vector<std::string> files = {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                          "model-00003-of-00003.safetensors", "model.safetensors.index.json"};
  EXPECT_EQ(w.files(), files);
  EXPECT_EQ(dir_listing(d.path()), files);  // no partial or .tmp files left behind

  const auto idx = nlohmann::json::parse(read_text_file(d.file("model.safetensors.index.json")));
  EXPECT_EQ(idx["metadata"]["total_size"], 80);
  EXPECT_EQ(idx["weight_map"].size(), 5u);
  EXPECT_EQ(idx["weight_map"]["t0"], "model-00001-of-00003.safetensors");
  EXPECT_EQ(idx["weight_map"]["t1"], "model-00001-of-00003.safetensors");
  EXPECT_EQ(idx["weight_map"]["t2"], "model-00002-of-00003.safetensors");
  EXPECT_EQ(idx["weight_map"]["t4"], "model-00003-of-00003.safetensors");

  auto c = SafetensorsCheckpoint::open_dir(d.path());
  EXPECT_EQ(c.names(), (std::vector<std::string>{"t0", "t1", "t2", "t3", "t4"}));
  for (int i = 0; i < 5; ++i) {
    const std::string n = "t" + std::to_string(i);
    EXPECT_EQ(values(c.get(n)), values(filled({4}, DType::F32, float(i)))) << n;
  }
  EXPECT_EQ(fs::path(c.file_of("t3")).filename(), "model-00002-of-00003.safetensors");
  EXPECT_EQ(c.info("t4").shape, std::vector<int64_t>{4});
  EXPECT_FALSE(c.has("t5"));
  EXPECT_CONTAINS(input_error([&] { c.get("t5"); }), "no tensor named 't5'");
}

TEST(Safetensors, OversizedTensorGetsAShardOfItsOwn) {
  TempDir d;
  ShardedSafetensorsWriter w(d.path(), 10);
  w.add("small0", filled({1}, DType::F32, 1));   // 4 B
  w.add("big", filled({10}, DType::F32, 2));     // 40 B > max
  w.add("small1", filled({2}, DType::BF16, 3));  // 4 B
  w.add("small2", filled({2}, DType::BF16, 4));  // 4 B: fits beside small1
  w.finish();
  auto c = SafetensorsCheckpoint::open_dir(d.path());
  EXPECT_EQ(fs::path(c.file_of("small0")).filename(), "model-00001-of-00003.safetensors");
  EXPECT_EQ(fs::path(c.file_of("big")).filename(), "model-00002-of-00003.safetensors");
  EXPECT_EQ(fs::path(c.file_of("small2")).filename(), "model-00003-of-00003.safetensors");
  EXPECT_EQ(values(c.get("big")), values(filled({10}, DType::F32, 2)));
  EXPECT_EQ(values(c.get("small2")), (std::vector<float>{4, 4.25f}));
}

TEST(Safetensors, SingleShardHasNoIndexAndReplacesAnEarlierSave) {
  TempDir d;
  {
    ShardedSafetensorsWriter w(d.path(), 8);
    for (int i = 0; i < 3; ++i) w.add("old" + std::to_string(i), filled({2}, DType::F32, 0));
    w.finish();
  }
  moe::testing::write_file(d.file("config.json"), "{}");
  ShardedSafetensorsWriter w(d.path(), 1000);
  w.add("x", filled({3}, DType::BF16, 1));
  w.finish();
  EXPECT_EQ(w.files(), std::vector<std::string>{"model.safetensors"});
  // the stale shards and index are gone; unrelated files stay
  EXPECT_EQ(dir_listing(d.path()), (std::vector<std::string>{"config.json", "model.safetensors"}));
  auto c = SafetensorsCheckpoint::open_dir(d.path());
  EXPECT_EQ(c.names(), std::vector<std::string>{"x"});
  EXPECT_EQ(values(c.get("x")), (std::vector<float>{1, 1.25f, 1.5f}));
}

TEST(Safetensors, WriterWithNoTensorsWritesAnEmptyModelFile) {
  TempDir d;
  ShardedSafetensorsWriter w(d.file("out"), 100);  // creates the directory
  w.finish();
  auto c = SafetensorsCheckpoint::open_dir(d.file("out"));
  EXPECT_TRUE(c.names().empty());
  EXPECT_EQ(dir_listing(d.file("out")), std::vector<std::string>{"model.safetensors"});
}

TEST(Safetensors, WriterAbandonedBeforeFinishLeavesNothing) {
  TempDir d;
  {
    ShardedSafetensorsWriter w(d.path(), 4);
    w.add("a", filled({1}, DType::F32, 0));
    w.add("b", filled({1}, DType::F32, 0));  // flushes the first shard to a partial file
    EXPECT_CONTAINS(input_error([&] { w.add("a", filled({1}, DType::F32, 0)); }), "tensor 'a' is added twice");
  }
  EXPECT_TRUE(dir_listing(d.path()).empty());
}

TEST(Safetensors, DirectoryWithOneUnindexedFileAndPreferenceOrder) {
  TempDir d;
  write_safetensors(d.file("weights.safetensors"), {{"w", filled({2}, DType::F16, 1)}});
  auto c = SafetensorsCheckpoint::open_dir(d.path());
  EXPECT_EQ(c.names(), std::vector<std::string>{"w"});
  EXPECT_EQ(values(c.get("w")), (std::vector<float>{1, 1.25f}));

  // model.safetensors wins over any other file and over an index, as in transformers
  write_safetensors(d.file("model.safetensors"), {{"m", filled({1}, DType::F32, 5)}});
  moe::testing::write_file(d.file("model.safetensors.index.json"), R"({"weight_map": {"w": "weights.safetensors"}})");
  c = SafetensorsCheckpoint::open_dir(d.path());
  EXPECT_EQ(c.names(), std::vector<std::string>{"m"});
}

// ---------------------------------------------------------------- malformed files

TEST(SafetensorsBadInput, FileShorterThanTheLengthPrefix) { expect_bad("abc", "3 bytes is too short"); }

TEST(SafetensorsBadInput, TruncatedDataSection) {
  TempDir d;
  write_safetensors(d.file("full.safetensors"), {{"w", filled({8}, DType::F32, 0)}});
  std::string bytes = read_bytes(d.file("full.safetensors"));
  bytes.resize(bytes.size() - 5);
  expect_bad(bytes, "tensor 'w': data_offsets [0, 32] run past the end of the data section (27 bytes)");
}

TEST(SafetensorsBadInput, HeaderLongerThanFile) {
  std::string f = raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "abcd");
  f[0] = char(0xff), f[1] = char(0x0f);  // 4095
  expect_bad(f, "header length 4095 is longer than the file (66 bytes)");
}

TEST(SafetensorsBadInput, HeaderLengthBeyondTheLimit) {
  std::string f = raw_file("{}", "");
  f[0] = 0, f[1] = 0, f[2] = 0, f[3] = char(0x80);  // 2 GiB
  expect_bad(f, "exceeds the 100 MB limit");
}

TEST(SafetensorsBadInput, HeaderNotJson) { expect_bad(raw_file("{oops", ""), "header is not valid JSON"); }

TEST(SafetensorsBadInput, HeaderNotAnObject) {
  expect_bad(raw_file("[1,2]", ""), "header is a JSON array, but must be a JSON object");
}

TEST(SafetensorsBadInput, UnknownDtype) {
  expect_bad(raw_file(R"({"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}})", "abcd"),
             "tensor 'a': unknown dtype 'Q4'");
}

TEST(SafetensorsBadInput, ShapeSizeMismatch) {
  expect_bad(
      raw_file(R"({"x":{"dtype":"F32","shape":[2,3],"data_offsets":[0,12]}})", std::string(12, 'x')),
      "bad.safetensors: tensor 'x': data_offsets [0, 12] hold 12 bytes but shape [2, 3] of F32 needs 24 (the file "
      "is corrupt or was truncated)");
}

TEST(SafetensorsBadInput, OffsetsOutOfRange) {
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "abcd"),
             "tensor 'a': data_offsets [0, 8] run past the end of the data section (4 bytes)");
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[18446744073709551612,18446744073709551615]}})",
                      "abcd"),
             "run past the end");
}

TEST(SafetensorsBadInput, OverlappingOffsets) {
  expect_bad(
      raw_file(
          R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
          std::string(8, 'x')),
      "tensors 'a' (data_offsets [0, 8]) and 'b' (data_offsets [4, 8]) overlap");
}

TEST(SafetensorsBadInput, ReversedOffsets) {
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", "abcd"),
             "data_offsets [4, 0] end before they begin");
}

TEST(SafetensorsBadInput, NegativeOrFractionalShape) {
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "abcd"),
             "shape [-1] must hold non-negative integers");
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}})", "abcd"), "non-negative integers");
}

TEST(SafetensorsBadInput, ShapeProductOverflows) {
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", "abcd"),
             "has more elements than fit in 64 bits");
  expect_bad(raw_file(R"({"a":{"dtype":"F64","shape":[2305843009213693952,2],"data_offsets":[0,4]}})", "abcd"),
             "needs more bytes than fit in 64 bits");
  // a zero dimension anywhere makes the product 0, whatever the other dimensions
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,4]}})", "abcd"),
             "needs 0");
}

TEST(SafetensorsBadInput, DuplicateTensorName) {
  expect_bad(
      raw_file(
          R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
          std::string(8, 'x')),
      "header lists key 'a' twice");
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[1],"dtype":"I32","data_offsets":[0,4]}})", "abcd"),
             "key 'dtype' twice");
}

TEST(SafetensorsBadInput, MissingOrExtraFields) {
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[1]}})", "abcd"), "tensor 'a' has no 'data_offsets' field");
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":1}})", "abcd"),
             "tensor 'a' has an unexpected field 'extra'");
  expect_bad(raw_file(R"({"a":[1,2,3]})", ""), "tensor 'a' is a JSON array");
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", "abcd"),
             "data_offsets [0] must be [begin, end]");
}

TEST(SafetensorsBadInput, MetadataMustBeStrings) {
  expect_bad(raw_file(R"({"__metadata__":{"n":1}})", ""), "__metadata__ entry 'n' is a JSON number");
  expect_bad(raw_file(R"({"__metadata__":"x"})", ""), "__metadata__ is a JSON string");
}

TEST(SafetensorsBadInput, IntegerDtypeIsReadableButNotComputable) {
  TempDir d;
  moe::testing::write_file(d.file("i.safetensors"),
                           raw_file(R"({"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", std::string(8, 'x')));
  auto f = SafetensorsFile::open(d.file("i.safetensors"));
  EXPECT_EQ(f->info("a").dtype, "I64");
  EXPECT_CONTAINS(input_error([&] { f->get("a"); }), "dtype I64 not supported for tensor 'a'");
  EXPECT_CONTAINS(input_error([&] { f->info("nope"); }), "i.safetensors: no tensor named 'nope'");
}

// ---------------------------------------------------------------- malformed directories

namespace {

// A directory with shard s1.safetensors holding tensors a and b, and the given index.
struct IndexedDir {
  TempDir d;
  explicit IndexedDir(const std::string& index_json) {
    write_safetensors(d.file("s1.safetensors"), {{"a", filled({2}, DType::F32, 0)}, {"b", filled({2}, DType::F32, 0)}});
    moe::testing::write_file(d.file("model.safetensors.index.json"), index_json);
  }
  std::string error() {
    return input_error([&] { SafetensorsCheckpoint::open_dir(d.path()); });
  }
  std::string index() const { return d.file("model.safetensors.index.json"); }
};

}  // namespace

TEST(SafetensorsBadDir, TensorMissingFromIndex) {
  IndexedDir x(R"({"weight_map": {"a": "s1.safetensors"}})");
  const std::string msg = x.error();
  EXPECT_EQ(msg.rfind(x.index() + ": ", 0), 0u) << msg;
  EXPECT_CONTAINS(msg, "tensor 'b' in 's1.safetensors' is missing from the index's weight_map");
}

TEST(SafetensorsBadDir, IndexNamesTensorTheShardLacks) {
  IndexedDir x(R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s1.safetensors"}})");
  const std::string msg = x.error();
  EXPECT_EQ(msg.rfind(x.index() + ": ", 0), 0u) << msg;
  EXPECT_CONTAINS(msg, "index names tensor 'c' in file 's1.safetensors' but s1.safetensors does not contain it");
}

TEST(SafetensorsBadDir, IndexReferencesMissingFile) {
  IndexedDir x(R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
  const std::string msg = x.error();
  EXPECT_EQ(msg.rfind(x.index() + ": ", 0), 0u) << msg;
  EXPECT_CONTAINS(msg, "puts tensor 'b' in 's2.safetensors', which does not exist");
}

TEST(SafetensorsBadDir, IndexShapeIsChecked) {
  EXPECT_CONTAINS(IndexedDir(R"({"nothing": 1})").error(), "has no 'weight_map' object");
  EXPECT_CONTAINS(IndexedDir(R"({"weight_map": [1]})").error(), "has no 'weight_map' object");
  EXPECT_CONTAINS(IndexedDir(R"({"weight_map": {}})").error(), "'weight_map' is empty");
  EXPECT_CONTAINS(IndexedDir(R"({"weight_map": {"a": 3}})").error(), "weight_map['a'] is a JSON number");
  EXPECT_CONTAINS(IndexedDir(R"({"weight_map": {"a": "../s1.safetensors"}})").error(),
                  "must name a file in the index's own directory");
  EXPECT_CONTAINS(IndexedDir(R"({"weight_map": )").error(), "model.safetensors.index.json: not valid JSON");
  EXPECT_CONTAINS(IndexedDir(R"("x")").error(), "is a JSON string, but a safetensors index must be an object");
}

TEST(SafetensorsBadDir, CorruptShardIsNamed) {
  IndexedDir x(R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s3.safetensors"}})");
  moe::testing::write_file(x.d.file("s3.safetensors"), "1234567");
  EXPECT_CONTAINS(x.error(), x.d.file("s3.safetensors") + ": 7 bytes is too short");
}

TEST(SafetensorsBadDir, NoWeightsOrTooManyUnindexedFiles) {
  TempDir d;
  EXPECT_CONTAINS(input_error([&] { SafetensorsCheckpoint::open_dir(d.path()); }), "no model.safetensors");
  write_safetensors(d.file("a.safetensors"), {});
  write_safetensors(d.file("b.safetensors"), {});
  EXPECT_CONTAINS(input_error([&] { SafetensorsCheckpoint::open_dir(d.path()); }),
                  d.path() + ": 2 *.safetensors files (a.safetensors, ...) but no model.safetensors.index.json");
  EXPECT_CONTAINS(input_error([&] { SafetensorsCheckpoint::open_dir(d.file("a.safetensors")); }), "not a directory");
}

// ---------------------------------------------------------------- mutated headers

// Deterministic mutations of valid files (byte flips, digit and token substitutions, cuts)
// replayed through the parser: each either parses into in-bounds, correctly sized,
// non-overlapping tensors or throws InputError; anything else fails the test (or crashes).
TEST(SafetensorsFuzzReplay, MutatedHeadersNeverCrash) {
  TempDir d;
  write_safetensors(
      d.file("a.safetensors"),
      {{"w", filled({3, 4}, DType::BF16, 1)}, {"b", filled({4}, DType::F32, 0)}, {"e", Tensor({0, 2}, DType::F16)}});
  write_safetensors(d.file("b.safetensors"), {{"x", filled({2}, DType::F16, 1)}}, {});
  const std::vector<std::string> seeds = {read_bytes(d.file("a.safetensors")), read_bytes(d.file("b.safetensors"))};
  const std::vector<std::string> tokens = {
      "0",    "9",       "-1",  "18446744073709551615", "[]", "{}", "\"", ",", ":", "\"F64\"", "\"dtype\"", "1e3",
      "null", "\\u0000", "\xff"};
  Rng rng(20240611);
  int accepted = 0, rejected_json = 0, rejected_later = 0;
  for (int i = 0; i < 2000; ++i) {
    const std::string& seed = seeds[rng.next() % seeds.size()];
    std::string m = seed;
    const int edits = 1 + int(rng.next() % 4);
    for (int k = 0; k < edits; ++k) {
      const size_t pos = rng.next() % m.size();
      switch (rng.next() % 4) {
        case 0:  // random byte anywhere (length prefix included)
          m[pos] = char(rng.next());
          break;
        case 1:  // a digit for a digit: keeps the JSON valid, breaks sizes and offsets
          for (size_t p = pos; p < m.size(); ++p)
            if (m[p] >= '0' && m[p] <= '9') {
              m[p] = char('0' + rng.next() % 10);
              break;
            }
          break;
        case 2:  // splice in a JSON-ish token
          m.insert(pos, tokens[rng.next() % tokens.size()]);
          break;
        default:  // cut
          m.resize(pos);
          break;
      }
      if (m.empty()) break;
    }
    // The length prefix no longer matches after insertions or cuts: fix it half the time so
    // the mutations reach the JSON and the checks after it.
    if (m.size() >= 8 && rng.next() % 2 == 0) {
      uint64_t n = 0;
      for (int b = 7; b >= 0; --b) n = (n << 8) | uint8_t(seed[b]);
      const uint64_t fixed =
          std::min<uint64_t>(n + (m.size() > seed.size() ? m.size() - seed.size() : 0), m.size() - 8);
      for (int b = 0; b < 8; ++b) m[b] = char((fixed >> (8 * b)) & 0xff);
    }
    const std::vector<unsigned char> buf(m.begin(), m.end());  // exactly sized: ASan sees overreads
    try {
      auto h = parse_safetensors_header(buf.data(), buf.size(), "mut");
      std::vector<std::pair<uint64_t, uint64_t>> ranges;
      for (const auto& t : h.tensors) {
        ASSERT_LE(t.begin, t.end);
        ASSERT_LE(t.end, buf.size());
        int64_t numel = 1;
        for (int64_t s : t.shape) numel *= s;
        ASSERT_EQ(t.end - t.begin, uint64_t(numel) * uint64_t(safetensors_dtype_size(t.dtype)));
        if (t.end > t.begin) ranges.emplace_back(t.begin, t.end);
      }
      std::sort(ranges.begin(), ranges.end());
      for (size_t r = 1; r < ranges.size(); ++r) ASSERT_LE(ranges[r - 1].second, ranges[r].first);
      ++accepted;
    } catch (const InputError& e) {
      const std::string msg = e.what();
      ASSERT_EQ(msg.rfind("mut: ", 0), 0u) << msg;
      ASSERT_EQ(msg.find('\n'), std::string::npos) << msg;
      (msg.find("not valid JSON") != std::string::npos ? rejected_json : rejected_later)++;
    }
  }
  // The mix must exercise every stage: some files survive, many are refused after the JSON
  // parsed (sizes, offsets, dtypes), not only by the JSON parser.
  EXPECT_GT(accepted, 20);
  EXPECT_GT(rejected_json, 100);
  EXPECT_GT(rejected_later, 200);
  std::printf("mutated headers: %d accepted, %d rejected as JSON, %d rejected by later checks\n", accepted,
              rejected_json, rejected_later);
}
