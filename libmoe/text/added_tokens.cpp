#include "text/added_tokens.h"

#include <utf8proc.h>

#include <algorithm>

namespace moe::text {

namespace {

// Unicode White_Space (Rust's char::is_whitespace, which HF's \s uses).
bool is_space(int32_t c) {
  return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

// Unicode \w as Rust's regex defines it: letters, marks, decimal digits, connector punctuation,
// letter numbers and the joiners.
bool is_word(int32_t c) {
  if (c == 0x200c || c == 0x200d) return true;
  switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_PC: return true;
    default: return false;
  }
}

// The code point starting at s[i] (s is valid UTF-8) and its length.
int32_t decode_at(std::string_view s, size_t i, size_t* len) {
  int32_t cp = -1;
  auto n =
      utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i), utf8proc_ssize_t(s.size() - i), &cp);
  *len = n > 0 ? size_t(n) : 1;
  return cp;
}

// Start of the code point that ends at s[end - 1].
size_t prev_start(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xc0) == 0x80) --i;
  return i;
}

}  // namespace

void AddedTokenMatcher::add(const AddedToken* token, std::string pattern) {
  if (pattern.empty()) return;
  auto& list = by_first_byte_[static_cast<unsigned char>(pattern[0])];
  list.push_back({std::move(pattern), token});
  std::stable_sort(list.begin(), list.end(),
                   [](const Entry& a, const Entry& b) { return a.pattern.size() > b.pattern.size(); });
  ++count_;
}

void AddedTokenMatcher::split(std::string_view s, std::vector<TextSegment>& out) const {
  size_t start_offset = 0, i = 0;
  while (i < s.size()) {
    const Entry* hit = nullptr;
    for (const Entry& e : by_first_byte_[static_cast<unsigned char>(s[i])]) {
      if (s.compare(i, e.pattern.size(), e.pattern) == 0) {
        hit = &e;
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    size_t start = i, stop = i + hit->pattern.size(), len = 0;
    const AddedToken& t = *hit->token;
    if (t.single_word) {
      const bool word_before = start > 0 && is_word(decode_at(s, prev_start(s, start), &len));
      const bool word_after = stop < s.size() && is_word(decode_at(s, stop, &len));
      if (word_before || word_after) {  // HF skips this match; scanning resumes after it
        i = stop;
        continue;
      }
    }
    if (t.lstrip) {
      while (start > start_offset) {
        const size_t p = prev_start(s, start);
        if (!is_space(decode_at(s, p, &len))) break;
        start = p;
      }
    }
    if (t.rstrip) {
      while (stop < s.size() && is_space(decode_at(s, stop, &len))) stop += len;
    }
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, t.id});
    start_offset = i = stop;
  }
  if (start_offset < s.size()) out.push_back({start_offset, s.size(), -1});
}

}  // namespace moe::text
