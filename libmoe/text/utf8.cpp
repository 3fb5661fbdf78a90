#include "core/error.h"
#include "text/tokenizer.h"

namespace moe::text {

namespace {
// Length of the UTF-8 sequence starting with `c`, 0 if `c` cannot start one.
int seq_len(unsigned char c) {
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) return 2;
  if (c >= 0xe0 && c <= 0xef) return 3;
  if (c >= 0xf0 && c <= 0xf4) return 4;
  return 0;
}
bool valid_second(unsigned char c0, unsigned char c1) {
  if ((c1 & 0xc0) != 0x80) return false;
  if (c0 == 0xe0) return c1 >= 0xa0;
  if (c0 == 0xed) return c1 < 0xa0;  // no surrogates
  if (c0 == 0xf0) return c1 >= 0x90;
  if (c0 == 0xf4) return c1 < 0x90;
  return true;
}
}  // namespace

std::string sanitize_utf8(std::string_view s, size_t* incomplete_tail) {
  static const char kReplacement[] = "\xef\xbf\xbd";
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  if (incomplete_tail) *incomplete_tail = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const int n = seq_len(c);
    if (n == 0) {
      out += kReplacement, ++i;
      continue;
    }
    int ok = 1;  // bytes of a valid prefix of the sequence
    while (ok < n && i + size_t(ok) < s.size()) {
      const unsigned char b = static_cast<unsigned char>(s[i + size_t(ok)]);
      if (ok == 1 ? !valid_second(c, b) : (b & 0xc0) != 0x80) break;
      ++ok;
    }
    if (ok == n) {
      out.append(s.substr(i, size_t(n)));
      i += size_t(n);
    } else if (i + size_t(ok) == s.size() && incomplete_tail) {
      *incomplete_tail = size_t(ok);  // may still complete
      break;
    } else {
      out += kReplacement;  // one replacement per maximal invalid prefix, as from_utf8_lossy
      i += size_t(ok);
    }
  }
  return out;
}

std::string require_utf8(std::string_view text) {
  std::string clean = sanitize_utf8(text);
  if (clean.size() != text.size() || clean != text) {
    size_t i = 0;
    while (i < text.size() && i < clean.size() && text[i] == clean[i]) ++i;
    throw_input("input text is not valid UTF-8 (first bad byte at offset {}); convert it to UTF-8 first", i);
  }
  return clean;
}

std::string StreamDecoder::push(int32_t id) {
  if (skip_special_ && tok_.is_special(id)) return "";
  pending_ += tok_.token_bytes(id);
  size_t tail = 0;
  std::string ready = sanitize_utf8(pending_, &tail);
  pending_.erase(0, pending_.size() - tail);
  return ready;
}

std::string StreamDecoder::flush() {
  std::string out = sanitize_utf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace moe::text
