// torch zip checkpoints: our writer read back by our reader and by torch.load, files written by
// torch.save read by our reader, and the restricted unpickler refusing code.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

#include "io/torch_file.h"
#include "testutil.h"

using namespace moe;
using namespace moe::io;
using moe::testing::input_error;
using moe::testing::TempDir;

namespace {

bool have_torch() { return std::system("/usr/bin/python3 -c 'import torch' > /dev/null 2>&1") == 0; }

Tensor iota(Shape s, DType dt) {
  Tensor t(s, DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = float(i) - 1.5f;
  return t.to(dt);
}

PyPtr sample_root(std::vector<std::pair<std::string, Tensor>>* storages) {
  auto model = PyValue::container(PyValue::kOrderedDict);
  int key = 0;
  for (auto [name, dt, shape] : {std::tuple{"decoder.a.weight", DType::F32, Shape{2, 3}},
                                 std::tuple{"decoder.b.weight", DType::BF16, Shape{4}},
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
  const std::string evil = std::string("\x80\x02") + "cos\nsystem\nX\x02\x00\x00\x00lsR.";
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
