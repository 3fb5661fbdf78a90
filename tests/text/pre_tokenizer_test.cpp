// Pre-tokenizer steps against Hugging Face's semantics (the expectations follow HF's own
// split.rs cases): Split behaviors and invert, Digits, ByteLevel's per-piece prefix space.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "text/pre_tokenizer.h"

using moe::text::PreTokenizer;

namespace {

std::vector<std::string> pieces(const std::string& pre_tokenizer_json, std::string text) {
  PreTokenizer p;
  p.parse(nlohmann::json::parse(pre_tokenizer_json), "test");
  std::vector<std::string> out;
  for (auto [b, e] : p.run(text)) out.push_back(text.substr(b, e - b));
  return out;
}

std::string split(const std::string& behavior, bool invert) {
  return R"({"type": "Split", "pattern": {"Regex": "\\w+|[^\\w\\s]+"}, "behavior": ")" + behavior + R"(", "invert": )" +
         (invert ? "true" : "false") + "}";
}

using V = std::vector<std::string>;

}  // namespace

TEST(PreTokenizer, SplitBehaviorsWithInvert) {
  // Inverted, the whitespace between the words is what the behaviors act on.
  const std::string s = "How are you doing?";
  EXPECT_EQ(pieces(split("Removed", true), s), (V{"How", "are", "you", "doing", "?"}));
  EXPECT_EQ(pieces(split("Isolated", true), s), (V{"How", " ", "are", " ", "you", " ", "doing", "?"}));
  EXPECT_EQ(pieces(split("MergedWithPrevious", true), s), (V{"How ", "are ", "you ", "doing", "?"}));
  EXPECT_EQ(pieces(split("MergedWithNext", true), s), (V{"How", " are", " you", " doing", "?"}));
  EXPECT_EQ(pieces(split("Contiguous", true), s), (V{"How", " ", "are", " ", "you", " ", "doing?"}));
  // Not inverted, the words are the matches.
  EXPECT_EQ(pieces(split("Removed", false), s), (V{" ", " ", " "}));
  EXPECT_EQ(pieces(split("MergedWithPrevious", false), s), (V{"How", " are", " you", " doing", "?"}));
  EXPECT_EQ(pieces(split("MergedWithNext", false), s), (V{"How ", "are ", "you ", "doing", "?"}));
  EXPECT_EQ(pieces(split("Contiguous", false), s), (V{"How", " ", "are", " ", "you", " ", "doing?"}));
}

TEST(PreTokenizer, StringPatternsAreLiteralAndInvertKeepsMatches) {
  const char* space = R"({"type": "Split", "pattern": {"String": " "}, "behavior": "Removed", "invert": false})";
  const char* hello = R"({"type": "Split", "pattern": {"String": "Hello"}, "behavior": "Removed", "invert": true})";
  EXPECT_EQ(pieces(space, "Hello Hello Hello"), (V{"Hello", "Hello", "Hello"}));
  EXPECT_EQ(pieces(hello, "Hello Hello Hello"), (V{"Hello", "Hello", "Hello"}));
  const char* dot = R"({"type": "Split", "pattern": {"String": "."}, "behavior": "Isolated"})";
  EXPECT_EQ(pieces(dot, "a.b+c"), (V{"a", ".", "b+c"}));  // "." is not a regex wildcard here
}

TEST(PreTokenizer, DigitsSplitsUnicodeNumbers) {
  EXPECT_EQ(pieces(R"({"type": "Digits", "individual_digits": false})", "a123b\u0663\u0664"),
            (V{"a", "123", "b", "\u0663\u0664"}));
  EXPECT_EQ(pieces(R"({"type": "Digits", "individual_digits": true})", "x42"), (V{"x", "4", "2"}));
}

TEST(PreTokenizer, ByteLevelPrefixSpaceIsPerPiece) {
  const char* seq = R"({"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"String": "|"}, "behavior": "Removed"},
      {"type": "ByteLevel", "add_prefix_space": true, "use_regex": false}]})";
  EXPECT_EQ(pieces(seq, "hi|there| x"), (V{" hi", " there", " x"}));
  // use_regex: GPT-2's own split, after the prefix space
  EXPECT_EQ(pieces(R"({"type": "ByteLevel", "add_prefix_space": true})", "Hello world's 42"),
            (V{" Hello", " world", "'s", " 42"}));
}

TEST(PreTokenizer, UnsupportedRejectedByName) {
  PreTokenizer p;
  try {
    p.parse(nlohmann::json::parse(R"({"type": "Metaspace", "replacement": "_"})"), "tokenizer.json");
    FAIL();
  } catch (const moe::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("Metaspace"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos);
  }
  EXPECT_THROW(
      p.parse(nlohmann::json::parse(R"({"type": "Split", "pattern": {"String": "x"}, "behavior": "Odd"})"), "t"),
      moe::InputError);
}
