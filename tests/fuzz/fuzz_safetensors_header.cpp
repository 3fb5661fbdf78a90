// libFuzzer target for the safetensors header parser (io/safetensors.h): any input must either
// parse into tensors whose byte ranges lie inside the input, hold exactly shape x element size
// bytes and do not overlap, or raise moe::InputError. Any other exception escapes and crashes
// the run, as do ASan reports and the aborts below. Build with -DMOE_FUZZ=ON and clang
// (tests/fuzz/CMakeLists.txt); seed corpus in tests/fuzz/seeds_safetensors/.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <utility>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto h = moe::io::parse_safetensors_header(data, size, "fuzz");
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (const auto& t : h.tensors) {
      if (t.begin > t.end || t.end > size) std::abort();
      uint64_t numel = 1;
      for (int64_t d : t.shape) numel *= uint64_t(d);
      if (t.end - t.begin != numel * uint64_t(moe::io::safetensors_dtype_size(t.dtype))) std::abort();
      if (t.end > t.begin) ranges.emplace_back(t.begin, t.end);
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i)
      if (ranges[i].first < ranges[i - 1].second) std::abort();
  } catch (const moe::InputError&) {
  }
  return 0;
}
