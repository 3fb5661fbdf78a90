// Added tokens of a tokenizer.json (<|im_start|>, <think>, ...) and the matcher that cuts them
// out of text before normalization and pre-tokenization, with Hugging Face's semantics for
// the lstrip / rstrip / single_word flags. Used by the BPE tokenizer's encode().
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moe::text {

struct AddedToken {
  std::string content;  // as written in tokenizer.json
  int32_t id = -1;
  bool special = false, lstrip = false, rstrip = false, single_word = false;
  // Matched in the normalized text (its content normalized too) instead of the raw text.
  bool normalized = false;
};

// A piece of text: either an added token (id >= 0) or plain text to tokenize (id == -1).
struct TextSegment {
  size_t begin, end;
  int32_t id;
};

class AddedTokenMatcher {
 public:
  // `pattern` is what `token` matches: its content, normalized if it is a normalized token.
  // `token` must outlive the matcher.
  void add(const AddedToken* token, std::string pattern);
  bool empty() const { return count_ == 0; }
  // Cuts `s` into segments covering it in order: at the leftmost position where a token
  // matches, the longest one wins (Aho-Corasick leftmost-longest, as HF). A single_word token
  // next to a word character is left as text; lstrip/rstrip tokens swallow the whitespace
  // beside them.
  void split(std::string_view s, std::vector<TextSegment>& out) const;

 private:
  struct Entry {
    std::string pattern;
    const AddedToken* token;
  };
  std::array<std::vector<Entry>, 256> by_first_byte_;  // each list longest pattern first
  size_t count_ = 0;
};

}  // namespace moe::text
