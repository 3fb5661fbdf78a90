// libFuzzer target for torch checkpoints: the first input byte picks the reader.
//  - even: the rest is a pickle stream for the restricted unpickler;
//  - odd: the rest is a whole .pt (zip) file opened by TorchFile, whose tensors are then read.
// Any input must parse or raise InputError; nothing may crash or execute.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"
#include "io/torch_file.h"

namespace {
void touch_tensors(const moe::io::TorchFile& f, const moe::io::PyValue& v, int depth) {
  if (depth > 64) return;
  if (v.kind == moe::io::PyValue::kTensor) f.tensor(v.tensor);
  for (const auto& x : v.items)
    if (x) touch_tensors(f, *x, depth + 1);
  for (const auto& [k, x] : v.entries)
    if (x) touch_tensors(f, *x, depth + 1);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    if (data[0] % 2 == 0) {
      moe::io::pickle_loads(rest, "fuzz.pkl");
    } else {
      static const std::string path = (std::filesystem::temp_directory_path() / "moe_fuzz.pt").string();
      std::ofstream(path, std::ios::binary | std::ios::trunc) << rest;
      auto f = moe::io::TorchFile::open(path);
      touch_tensors(f, *f.root(), 0);
    }
  } catch (const moe::InputError&) {
  }
  return 0;
}
