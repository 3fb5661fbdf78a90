// libFuzzer target for the text layer: the first input byte picks the mode.
//  - mode 0: the rest is a tokenizer.json; loading must succeed or raise InputError.
//  - mode 1: the rest is text encoded with the embedded tiny tokenizer (MOE_FUZZ_TOKENIZER_DIR,
//    default configs/tiny-moe); encode must return ids that decode, or raise InputError.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "core/error.h"
#include "text/tokenizer.h"

namespace {
const moe::text::Tokenizer& tiny() {
  static std::unique_ptr<moe::text::Tokenizer> t = [] {
    const char* dir = std::getenv("MOE_FUZZ_TOKENIZER_DIR");
    return moe::text::Tokenizer::load(dir ? dir : "configs/tiny-moe");
  }();
  return *t;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    if (data[0] % 2 == 0) {
      static const std::string dir = (std::filesystem::temp_directory_path() / "moe_fuzz_tok").string();
      std::filesystem::create_directories(dir);
      std::ofstream(dir + "/tokenizer.json", std::ios::binary | std::ios::trunc) << rest;
      auto t = moe::text::Tokenizer::load(dir);
      t->decode(t->encode("hello <|im_end|> 你好 123"));
    } else {
      auto ids = tiny().encode(rest);
      for (int32_t id : ids)
        if (id < 0 || id >= tiny().vocab_size()) std::abort();
      tiny().decode(ids);
    }
  } catch (const moe::InputError&) {
  }
  return 0;
}
