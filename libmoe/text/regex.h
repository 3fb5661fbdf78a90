// A compiled PCRE2 regular expression (UTF + Unicode properties, JIT when available) used by
// the pre-tokenizers; finds all non-overlapping matches in a UTF-8 string.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moe::text {

class Regex {
 public:
  // InputError naming `where` if the pattern does not compile.
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // [begin, end) byte ranges of every match, left to right. `s` must be valid UTF-8.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*, hidden so callers need no PCRE2 headers
};

}  // namespace moe::text
