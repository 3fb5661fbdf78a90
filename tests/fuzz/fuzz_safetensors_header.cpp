// libFuzzer target for the safetensors header parser: any input must either parse into
// in-bounds tensors or raise InputError. Build with -DMOE_FUZZ=ON and clang.
#include <cstdint>
#include <cstdlib>

#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto h = moe::io::parse_safetensors_header(data, size, "fuzz");
    for (const auto& t : h.tensors)
      if (t.end > size || t.begin > t.end) std::abort();
  } catch (const moe::InputError&) {
  }
  return 0;
}
