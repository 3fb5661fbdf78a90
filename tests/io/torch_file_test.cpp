// torch zip checkpoints: our writer read back by our reader and by torch.load, files written by
// torch.save read by our reader, and the restricted unpickler refusing code.
#include <gtest/gtest.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <utility>

#include "io/crc32.h"
#include "io/torch_file.h"
#include "testutil.h"

using namespace moe;
using namespace moe::io;
using moe::testing::input_error;
using moe::testing::TempDir;

namespace {

bool have_torch() { return std::system("/usr/bin/python3 -c 'import torch' > /dev/null 2>&1") == 0; }

Tensor iota(Shape s, DType dt) {
  Tensor t(std::move(s), DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = float(i) - 1.5f;
  return t.to(dt);
}

PyPtr sample_root(std::vector<std::pair<std::string, Tensor>>* storages) {
  auto model = PyValue::container(PyValue::kOrderedDict);
  int key = 0;
  for (auto [name, dt, shape] :
       {std::tuple{"decoder.a.weight", DType::F32, Shape{2, 3}}, std::tuple{"decoder.b.weight", DType::BF16, Shape{4}},
        std::tuple{"decoder.c.weight", DType::F16, Shape{1, 2, 2}}}) {
    Tensor t = iota(shape, dt);
    const TensorRef r = contiguous_ref(std::to_string(key), t);
    storages->push_back({std::to_string(key++), t});
    model->set(name, PyValue::tensor_ref(r));
  }
  auto args = PyValue::container(PyValue::kNamespace);
  args->set("tensor_model_parallel_size", PyValue::integer(2));
  args->set("lr", PyValue::floating(1e-4));
  args->set("seq_length", PyValue::integer(100000));
  args->set("big", PyValue::integer(int64_t(1) << 40));
  args->set("neg", PyValue::integer(-3));
  args->set("name", PyValue::str("moectl ✓"));
  args->set("bf16", PyValue::boolean(true));
  args->set("none", PyValue::none());
  auto lst = PyValue::container(PyValue::kList);
  lst->items = {PyValue::integer(1), PyValue::str("x")};
  args->set("lst", lst);
  auto root = PyValue::container(PyValue::kDict);
  root->set("args", args);
  root->set("checkpoint_version", PyValue::floating(3.0));
  root->set("iteration", PyValue::integer(7));
  root->set("model", model);
  return root;
}

}  // namespace

TEST(TorchFile, RoundTripThroughOurReader) {
  TempDir d;
  std::vector<std::pair<std::string, Tensor>> storages;
  auto root = sample_root(&storages);
  write_torch_file(d.file("m.pt"), *root, storages);
  auto f = TorchFile::open(d.file("m.pt"));
  EXPECT_EQ(f.root()->get("iteration")->i, 7);
  auto args = f.root()->get("args");
  ASSERT_EQ(args->kind, PyValue::kNamespace);
  EXPECT_EQ(args->get("tensor_model_parallel_size")->i, 2);
  EXPECT_EQ(args->get("big")->i, int64_t(1) << 40);
  EXPECT_EQ(args->get("neg")->i, -3);
  EXPECT_DOUBLE_EQ(args->get("lr")->f, 1e-4);
  EXPECT_EQ(args->get("name")->s, "moectl ✓");
  EXPECT_EQ(args->get("none")->kind, PyValue::kNone);
  auto model = f.root()->get("model");
  ASSERT_EQ(model->kind, PyValue::kOrderedDict);
  ASSERT_EQ(model->entries.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    Tensor t = f.tensor(model->entries[i].second->tensor);
    EXPECT_EQ(t.shape(), storages[i].second.shape());
    EXPECT_EQ(std::memcmp(t.raw(), storages[i].second.raw(), t.nbytes()), 0);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 64, 0u) << "storages are 64-byte aligned in the file";
  }
}

TEST(TorchFile, TorchLoadReadsOurFiles) {
  if (!have_torch()) GTEST_SKIP() << "/usr/bin/python3 with torch not available";
  TempDir d;
  std::vector<std::pair<std::string, Tensor>> storages;
  write_torch_file(d.file("m.pt"), *sample_root(&storages), storages);
  const std::string py =
      "import torch, sys, collections\n"
      "c = torch.load(sys.argv[1])\n"
      "m = c['model']\n"
      "assert isinstance(m, collections.OrderedDict)\n"
      "assert m['decoder.a.weight'].dtype == torch.float32 and m['decoder.a.weight'].tolist() == "
      "[[-1.5, -0.5, 0.5], [1.5, 2.5, 3.5]]\n"
      "assert m['decoder.b.weight'].dtype == torch.bfloat16 and m['decoder.b.weight'].float().tolist() == "
      "[-1.5, -0.5, 0.5, 1.5]\n"
      "assert m['decoder.c.weight'].dtype == torch.float16 and m['decoder.c.weight'].shape == (1, 2, 2)\n"
      "a = c['args']\n"
      "assert a.tensor_model_parallel_size == 2 and a.lr == 1e-4 and a.big == 2**40 and a.neg == -3\n"
      "assert a.name == 'moectl \\u2713' and a.bf16 is True and a.none is None and a.lst == [1, 'x']\n"
      "assert c['iteration'] == 7 and c['checkpoint_version'] == 3.0\n";
  moe::testing::write_file(d.file("check.py"), py);
  EXPECT_EQ(std::system(("/usr/bin/python3 " + d.file("check.py") + " " + d.file("m.pt")).c_str()), 0);
}

TEST(TorchFile, ReadsTorchSaveFiles) {
  if (!have_torch()) GTEST_SKIP() << "/usr/bin/python3 with torch not available";
  TempDir d;
  const std::string py =
      "import torch, sys, collections, argparse\n"
      "m = collections.OrderedDict()\n"
      "m['w'] = torch.arange(12, dtype=torch.float32).reshape(3, 4)\n"
      "m['h'] = torch.arange(4, dtype=torch.float32).to(torch.bfloat16)\n"
      "base = torch.arange(10, dtype=torch.float16)\n"
      "m['view'] = base[2:6]  # a view with a storage offset, sharing the storage\n"
      "m['base'] = base\n"
      "ns = argparse.Namespace(tensor_model_parallel_size=4, lr=3e-5, name='x', items=[1, 2.5, None], "
      "t=(1, 'a'), neg=-70000, big=2**40)\n"
      "torch.save({'model': m, 'args': ns, 'iteration': 1000, 'bytes': b'\\x00\\xff'}, sys.argv[1])\n";
  moe::testing::write_file(d.file("make.py"), py);
  ASSERT_EQ(std::system(("/usr/bin/python3 " + d.file("make.py") + " " + d.file("t.pt")).c_str()), 0);
  auto f = TorchFile::open(d.file("t.pt"));
  EXPECT_EQ(f.root()->get("iteration")->i, 1000);
  EXPECT_EQ(f.root()->get("bytes")->s, std::string("\x00\xff", 2));
  auto a = f.root()->get("args");
  EXPECT_EQ(a->get("tensor_model_parallel_size")->i, 4);
  EXPECT_EQ(a->get("neg")->i, -70000);
  EXPECT_EQ(a->get("big")->i, int64_t(1) << 40);
  EXPECT_EQ(a->get("items")->items.size(), 3u);
  auto m = f.root()->get("model");
  Tensor w = f.tensor(m->get("w")->tensor);
  EXPECT_EQ(w.shape(), (Shape{3, 4}));
  EXPECT_EQ(w.f32()[11], 11.0f);
  Tensor h = f.tensor(m->get("h")->tensor).to(DType::F32);
  EXPECT_EQ(h.f32()[3], 3.0f);
  Tensor v = f.tensor(m->get("view")->tensor).to(DType::F32);
  EXPECT_EQ(v.shape(), (Shape{4}));
  EXPECT_EQ(v.f32()[0], 2.0f);
}

TEST(TorchFile, RestrictedUnpicklerRefusesCode) {
  using namespace std::string_literals;  // the pickle holds NUL bytes
  const std::string evil =
      "\x80\x02"
      "cos\nsystem\nX\x02\x00\x00\x00lsR."s;
  EXPECT_NE(input_error([&] { pickle_loads(evil, "evil.pkl"); }).find("global 'os.system' is not allowed"),
            std::string::npos);
  const std::string inst = std::string("\x80\x02") + "(iposix\nsystem\n.";
  EXPECT_NE(input_error([&] { pickle_loads(inst, "inst.pkl"); }).find("opcode 0x69 is not allowed"), std::string::npos);
  EXPECT_NE(input_error([&] { pickle_loads(std::string("\x80\x02]", 3), "short.pkl"); }).find("ends early"),
            std::string::npos);
  TempDir d;
  moe::testing::write_file(d.file("x.pt"), "PK not really a zip");
  EXPECT_NE(input_error([&] { TorchFile::open(d.file("x.pt")); }).find("x.pt"), std::string::npos);
}

// Files past 4 GiB need zip64 records; MOE_FORCE_ZIP64 makes the writer use them on a small
// file so both readers can be checked on that path.
TEST(TorchFile, Zip64RecordsReadByTorchAndUs) {
  TempDir d;
  std::vector<std::pair<std::string, Tensor>> storages;
  auto root = sample_root(&storages);
  setenv("MOE_FORCE_ZIP64", "1", 1);
  write_torch_file(d.file("z.pt"), *root, storages);
  unsetenv("MOE_FORCE_ZIP64");
  auto f = TorchFile::open(d.file("z.pt"));
  auto model = f.root()->get("model");
  Tensor t = f.tensor(model->entries[0].second->tensor);
  EXPECT_EQ(std::memcmp(t.raw(), storages[0].second.raw(), t.nbytes()), 0);
  if (!have_torch()) GTEST_SKIP() << "/usr/bin/python3 with torch not available";
  const std::string py =
      "import torch, sys, zipfile\n"
      "z = zipfile.ZipFile(sys.argv[1])\n"
      "assert z.testzip() is None\n"
      "c = torch.load(sys.argv[1])\n"
      "assert c['model']['decoder.a.weight'].tolist() == [[-1.5, -0.5, 0.5], [1.5, 2.5, 3.5]]\n";
  moe::testing::write_file(d.file("check.py"), py);
  EXPECT_EQ(std::system(("/usr/bin/python3 " + d.file("check.py") + " " + d.file("z.pt")).c_str()), 0);
}

namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// CRC-32 (zip's: reflected polynomial 0xEDB88320), written out here independently of zlib.
uint32_t reference_crc32(const std::string& s) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xffffffffu;
  for (unsigned char b : s) c = table[(c ^ b) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

// The CRC-32 recorded in the local header of entry `name`, and the entry's data.
std::pair<uint32_t, std::string> stored_entry(const std::string& zip, const std::string& name) {
  const size_t at = zip.find(name);
  EXPECT_NE(at, std::string::npos) << name;
  const size_t h = at - 30;
  auto u16 = [&](size_t p) { return uint32_t(uint8_t(zip[p])) | uint32_t(uint8_t(zip[p + 1])) << 8; };
  auto u32 = [&](size_t p) { return u16(p) | u16(p + 2) << 16; };
  EXPECT_EQ(u32(h), 0x04034b50u);
  const size_t data = h + 30 + u16(h + 26) + u16(h + 28);
  EXPECT_EQ(data % 64, 0u);
  return {u32(h + 14), zip.substr(data, u32(h + 18))};
}

}  // namespace

// Storages copied from files (pread, checksummed on two threads for large ones, split into
// runs) give the same bytes, byte for byte, as the same storages written from memory, and the
// CRC in each header is the CRC-32 of the data: sizes 0, odd, just under and over the
// two-thread threshold, runs at unaligned offsets, empty runs, runs from two files.
TEST(TorchFile, StoragesFromFilesMatchStoragesFromMemory) {
  TempDir d;
  std::mt19937_64 rng(7);
  std::string a(size_t(5) << 20, '\0'), b(size_t(3) << 20, '\0');
  for (auto& c : a) c = char(rng());
  for (auto& c : b) c = char(rng());
  moe::testing::write_file(d.file("a.bin"), a);
  moe::testing::write_file(d.file("b.bin"), b);
  auto fa = MappedFile::open(d.file("a.bin")), fb = MappedFile::open(d.file("b.bin"));
  using Runs = std::vector<TorchFileWriter::FileBytes>;
  const std::vector<Runs> cases = {
      {},
      {{fa.get(), 3, 0}},
      {{fa.get(), 1, 1}},
      {{fa.get(), 17, 4093}},
      {{fa.get(), 0, (size_t(2) << 20) - 2}},
      {{fa.get(), 5, (size_t(2) << 20) + 6}},
      {{fa.get(), 11, (size_t(5) << 20) - 11}},
      {{fa.get(), 100, 3000}, {fb.get(), 7, 0}, {fb.get(), 9, (size_t(2) << 20) + 333}, {fa.get(), 4096, 1 << 20}},
  };
  auto root = PyValue::container(PyValue::kDict);
  root->set("n", PyValue::integer(int64_t(cases.size())));
  {
    TorchFileWriter w(d.file("files.pt"), *root);
    for (size_t i = 0; i < cases.size(); ++i) {
      if (cases[i].size() == 1)
        w.add_storage_from(std::to_string(i), *cases[i][0].file, cases[i][0].offset, cases[i][0].size);
      else w.add_storage_from(std::to_string(i), cases[i]);
    }
    w.finish();
  }
  std::vector<std::pair<std::string, Tensor>> in_memory;
  std::vector<std::string> expect;
  for (size_t i = 0; i < cases.size(); ++i) {
    std::string bytes;
    for (const auto& r : cases[i]) bytes += (r.file == fa.get() ? a : b).substr(r.offset, r.size);
    expect.push_back(bytes);
  }
  // Memory-side twin for the even-sized cases (a BF16 tensor of those bytes).
  for (size_t i = 0; i < cases.size(); ++i) {
    size_t n = 0;
    for (const auto& r : cases[i]) n += r.size;
    if (n % 2) continue;
    Tensor t({int64_t(n / 2)}, DType::BF16);
    std::memcpy(t.raw(), expect[i].data(), n);
    in_memory.push_back({std::to_string(i), t});
  }
  const std::string zf = read_all(d.file("files.pt"));
  for (size_t i = 0; i < cases.size(); ++i) {
    size_t n = 0;
    for (const auto& r : cases[i]) n += r.size;
    const auto [crc, data] = stored_entry(zf, "archive/data/" + std::to_string(i));
    EXPECT_EQ(data, expect[i].substr(0, n)) << "case " << i;
    EXPECT_EQ(crc, reference_crc32(data)) << "case " << i;
  }
  // The same even-sized storages from memory: identical entries.
  {
    TorchFileWriter w(d.file("memory.pt"), *root);
    for (const auto& [key, t] : in_memory) w.add_storage(key, t);
    w.finish();
  }
  const std::string zm = read_all(d.file("memory.pt"));
  for (const auto& [key, t] : in_memory)
    EXPECT_EQ(stored_entry(zm, "archive/data/" + key), stored_entry(zf, "archive/data/" + key)) << key;
  if (!have_torch()) return;
  moe::testing::write_file(d.file("check.py"),
                           "import sys, zipfile\nassert zipfile.ZipFile(sys.argv[1]).testzip() is None\n");
  EXPECT_EQ(std::system(("/usr/bin/python3 " + d.file("check.py") + " " + d.file("files.pt")).c_str()), 0);
}

// crc32_update (carry-less multiply where the CPU has it) against the bitwise reference: every
// length up to 300 at every alignment, a large buffer whole and in uneven pieces.
TEST(TorchFile, Crc32MatchesReference) {
  std::mt19937_64 rng(11);
  std::string s(size_t(3) << 20, '\0');
  for (auto& c : s) c = char(rng());
  for (size_t off = 0; off < 16; ++off)
    for (size_t n = 0; n <= 300; ++n)
      ASSERT_EQ(crc32_update(0, s.data() + off, n), reference_crc32(s.substr(off, n))) << off << " " << n;
  const uint32_t whole = reference_crc32(s);
  EXPECT_EQ(crc32_update(0, s.data(), s.size()), whole);
  uint32_t c = 0;
  for (size_t at = 0, step = 1; at < s.size(); at += step, step = step * 3 + 7)
    c = crc32_update(c, s.data() + at, std::min(step, s.size() - at));
  EXPECT_EQ(c, whole);
}

namespace {

void flip_bit(const std::string& path, size_t at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(std::streamoff(at));
  char c = 0;
  f.read(&c, 1);
  c = char(c ^ 0x10);
  f.seekp(std::streamoff(at));
  f.write(&c, 1);
}

// A checkpoint with a small storage "0" and a 3 MiB one "1" (checksummed on two threads).
PyPtr two_storages(const std::string& path) {
  auto model = PyValue::container(PyValue::kOrderedDict);
  std::vector<std::pair<std::string, Tensor>> storages;
  for (auto [key, n] : {std::pair{"0", int64_t(6)}, std::pair{"1", int64_t(3) << 18}}) {
    Tensor t = iota({n}, DType::F32);
    model->set(std::string("w") + key, PyValue::tensor_ref(contiguous_ref(key, t)));
    storages.push_back({key, t});
  }
  auto root = PyValue::container(PyValue::kDict);
  root->set("model", model);
  write_torch_file(path, *root, storages);
  return root;
}

}  // namespace

// One bit flipped in a storage's data: tensor() and verify() (the check export's file-to-file
// copies rely on) throw one InputError naming the file, the entry and the cause, every time;
// the file still opens, and the intact storage still reads.
TEST(TorchFile, FlippedDataBitIsRefused) {
  TempDir d;
  for (const char* key : {"0", "1"}) {
    const std::string path = d.file(std::string("flip") + key + ".pt");
    two_storages(path);
    size_t at = 0;
    {
      auto f = TorchFile::open(path);
      const auto loc = f.locate(f.root()->get("model")->get(std::string("w") + key)->tensor);
      at = loc.first + loc.second * 3 / 4;  // in the second half: the helper thread's part
    }
    flip_bit(path, at);
    auto f = TorchFile::open(path);
    const TensorRef& bad = f.root()->get("model")->get(std::string("w") + key)->tensor;
    const TensorRef& good = f.root()->get("model")->get(std::string("w") + (key[0] == '0' ? "1" : "0"))->tensor;
    EXPECT_NO_THROW(f.locate(bad));  // layout checks read no data
    for (int i = 0; i < 2; ++i) {
      const std::string e = input_error([&] { f.tensor(bad); });
      EXPECT_NE(e.find(path), std::string::npos) << e;
      EXPECT_NE(e.find("'archive/data/" + std::string(key) + "'"), std::string::npos) << e;
      EXPECT_NE(e.find("checksum mismatch (file corrupted)"), std::string::npos) << e;
      EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    }
    EXPECT_NE(input_error([&] { f.verify(bad); }).find("checksum mismatch"), std::string::npos);
    Tensor t = f.tensor(good);
    EXPECT_EQ(t.f32()[1], -0.5f);
    // A copy of the TorchFile shares what was verified, and the corruption stays refused.
    const TorchFile g = f;
    EXPECT_NE(input_error([&] { g.tensor(bad); }).find("checksum mismatch"), std::string::npos);
  }
}

// One bit flipped in data.pkl: open() names the entry and the checksum, not a pickle oddity.
TEST(TorchFile, FlippedPickleBitIsRefused) {
  TempDir d;
  const std::string path = d.file("pkl.pt");
  two_storages(path);
  const std::string z = read_all(path);
  const std::string pkl = stored_entry(z, "archive/data.pkl").second;
  const size_t at = z.find(pkl);
  ASSERT_TRUE(pkl.size() > 20 && at != std::string::npos);
  flip_bit(path, at + pkl.size() / 2);
  const std::string e = input_error([&] { TorchFile::open(path); });
  EXPECT_NE(e.find(path), std::string::npos) << e;
  EXPECT_NE(e.find("'archive/data.pkl': checksum mismatch (file corrupted)"), std::string::npos) << e;
}

// PyTorch's distributed checkpoints: torch.save archives appended inside one file, each opened
// over its byte range; a storage streamed piecewise (memory, then bytes copied from a file).
TEST(TorchFile, ArchivesInsideOneFileWithStreamedStorages) {
  TempDir d;
  const Tensor a = iota({3, 5}, DType::BF16), b = iota({7}, DType::F32);
  moe::testing::write_file(d.file("src.bin"),
                           std::string("xyz") + std::string(static_cast<const char*>(b.raw()), b.nbytes()));
  auto src = MappedFile::open(d.file("src.bin"));
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  {
    OutputFile out(d.file("__0_0.distcp"));
    uint64_t base = 0;
    for (int i = 0; i < 2; ++i) {
      const Tensor& t = i == 0 ? a : b;
      TorchFileWriter w(out, base, *PyValue::tensor_ref(contiguous_ref("0", t)));
      w.add_storage_streamed("0", t.nbytes(), [&](TorchFileWriter::Sink& sink) {
        if (i == 0) {
          sink.write(t.raw(), 4), sink.write(static_cast<const char*>(t.raw()) + 4, t.nbytes() - 4);
        } else {
          sink.copy({{src.get(), 3, t.nbytes()}});  // the same bytes, from a file
        }
      });
      const uint64_t len = w.finish();
      ranges.push_back({base, len});
      base = (base + len + 63) / 64 * 64 + 64 * uint64_t(i + 1);  // items need not touch
    }
    out.close();
  }
  auto file = MappedFile::open(d.file("__0_0.distcp"));
  for (int i = 0; i < 2; ++i) {
    const TorchFile f = TorchFile::open_range(file, ranges[size_t(i)].first, ranges[size_t(i)].second, "item");
    ASSERT_EQ(f.root()->kind, PyValue::kTensor);
    const Tensor got = f.tensor(f.root()->tensor), &want = i == 0 ? a : b;
    ASSERT_EQ(got.shape(), want.shape());
    EXPECT_EQ(std::memcmp(got.raw(), want.raw(), want.nbytes()), 0) << "item " << i;
  }
  // A streamed storage that ends short is an internal error, never a silent short entry.
  OutputFile out(d.file("short.distcp"));
  TorchFileWriter w(out, 0, *PyValue::tensor_ref(contiguous_ref("0", a)));
  EXPECT_ANY_THROW(w.add_storage_streamed("0", a.nbytes(), [&](TorchFileWriter::Sink& s) { s.write(a.raw(), 2); }));
}

// Objects of classes a stream allows (PyTorch's checkpoint metadata) are written and read back;
// without the allowance the same bytes are refused by name.
TEST(TorchFile, PickleObjectsOfAllowedClassesOnly) {
  const std::string cls = "torch.distributed.checkpoint.metadata.ChunkStorageMetadata";
  auto size =
      PyValue::object("torch.Size", {PyValue::tuple({PyValue::integer(2), PyValue::integer(300)})}, nullptr, false);
  auto st = PyValue::container(PyValue::kDict);
  st->set("offsets", size), st->set("dtype", PyValue::global("torch.bfloat16"));
  const std::string bytes = pickle_dumps(*PyValue::object(cls, {}, st));
  EXPECT_NE(input_error([&] { pickle_loads(bytes, "m"); }).find("not allowed"), std::string::npos);
  const PyPtr v = pickle_loads(bytes, "m", {cls, "torch.Size", "torch.bfloat16"});
  ASSERT_EQ(v->kind, PyValue::kObject);
  EXPECT_EQ(v->s, cls);
  ASSERT_TRUE(v->state);
  const PyPtr off = v->state->get("offsets");
  ASSERT_TRUE(off && off->kind == PyValue::kObject && off->s == "torch.Size" && off->items.size() == 1);
  ASSERT_EQ(off->items[0]->items.size(), 2u);
  EXPECT_EQ(off->items[0]->items[1]->i, 300);
  EXPECT_EQ(v->state->get("dtype")->kind, PyValue::kGlobal);
  EXPECT_EQ(v->state->get("dtype")->s, "torch.bfloat16");
}
