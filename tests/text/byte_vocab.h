// The 256 byte tokens of a byte-level BPE vocab (GPT-2's byte -> character map, ids = byte
// values) as JSON object members, for the hand-written tokenizer.json files of the text tests.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace moe::testing {

// Printable ASCII maps to itself, space to "Ġ" (U+0120), "\n" to "Ċ" (U+010A). Ends with ", ".
inline std::string byte_vocab() {
  std::string v;
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const uint32_t cp = printable ? uint32_t(b) : uint32_t(256 + n++);
    std::string u;
    if (cp < 0x80) u += char(cp);
    else u += char(0xc0 | (cp >> 6)), u += char(0x80 | (cp & 0x3f));
    v += nlohmann::json(u).dump() + ": " + std::to_string(b) + ", ";
  }
  return v;
}

}  // namespace moe::testing
