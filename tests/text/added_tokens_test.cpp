// Added tokens (matched before BPE) with HF's flags, and BPE merging on long pieces, on a
// hand-written byte-level tokenizer.json whose ids can be checked by hand.
#include <gtest/gtest.h>

#include "core/error.h"
#include "testutil.h"
#include "text/byte_vocab.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

using namespace moe::text;
using moe::testing::TempDir;
using V = std::vector<int32_t>;

namespace {

std::string added(int id, const std::string& content, const std::string& flags) {
  return nlohmann::json(content).dump().insert(0, R"({"id": )" + std::to_string(id) + R"(, "content": )") + ", " +
         flags + "}";
}

// Byte tokens 0-255; merges "l l" -> ll (256), "h e" -> he (257), "he ll" -> hell (258);
// NFC normalizer; pre-tokenizer splits on spaces (kept as their own pieces).
std::unique_ptr<Tokenizer> load(TempDir& d, const std::vector<std::string>& added_tokens) {
  std::string a;
  for (const auto& t : added_tokens) a += (a.empty() ? "" : ",\n") + t;
  const std::string j = R"({"normalizer": {"type": "NFC"},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]},
    "decoder": {"type": "ByteLevel"}, "added_tokens": [)" +
                        a + R"(],
    "model": {"type": "BPE", "vocab": {)" +
                        moe::testing::byte_vocab() + R"("ll": 256, "he": 257, "hell": 258},
      "merges": [["l", "l"], "h e", "he ll"]}})";
  moe::testing::write_file(d.file("tokenizer.json"), j);
  return Tokenizer::load(d.path());
}

const char* kPlain = R"("special": false, "lstrip": false, "rstrip": false, "single_word": false, "normalized": false)";

}  // namespace

TEST(AddedTokens, LeftmostLongestMatchWins) {
  TempDir d;
  auto t = load(d, {added(300, "ab", kPlain), added(301, "abc", kPlain), added(302, "bcd", kPlain)});
  EXPECT_EQ(t->encode("xabcd"), (V{'x', 301, 'd'}));  // "abc" starts leftmost and is longest there
  EXPECT_EQ(t->encode("abab"), (V{300, 300}));
  EXPECT_EQ(t->token_id("abc"), 301);
  EXPECT_EQ(t->vocab_size(), 303);
}

TEST(AddedTokens, SingleWordOnlyBetweenNonWordCharacters) {
  TempDir d;
  auto t = load(
      d, {added(300, "ony",
                R"("special": false, "lstrip": false, "rstrip": false, "single_word": true, "normalized": false)")});
  EXPECT_EQ(t->encode("ony"), (V{300}));
  EXPECT_EQ(t->encode("Anthony ony."), (V{'A', 'n', 't', 'h', 'o', 'n', 'y', ' ', 300, '.'}));
  EXPECT_EQ(t->encode("onyx"), (V{'o', 'n', 'y', 'x'}));
  EXPECT_EQ(t->encode("_ony"), (V{'_', 'o', 'n', 'y'}));  // "_" is a word character (\w)
  // a letter outside ASCII is a word character too; CJK punctuation is not
  EXPECT_EQ(t->encode("\u00e9ony").size(), 5u);
  EXPECT_EQ(t->encode("\u3002ony").back(), 300);
}

TEST(AddedTokens, StripFlagsSwallowUnicodeWhitespace) {
  TempDir d;
  auto t = load(
      d, {added(300, "[M]",
                R"("special": true, "lstrip": true, "rstrip": false, "single_word": false, "normalized": false)"),
          added(301, "[R]",
                R"("special": true, "lstrip": false, "rstrip": true, "single_word": false, "normalized": false)")});
  EXPECT_EQ(t->encode("he \u3000\t[M] he"), (V{257, 300, ' ', 257}));  // spaces left of [M] go
  EXPECT_EQ(t->encode("he [R]\u00a0 \nhe"), (V{257, ' ', 301, 257}));  // spaces right of [R] go
  EXPECT_EQ(t->decode({257, 300, 257}, true), "hehe");
}

TEST(AddedTokens, NormalizedTokensMatchTheNormalizedText) {
  TempDir d;
  // 300 matches NFC text (so also the decomposed spelling); 301 only its exact raw spelling.
  auto t =
      load(d, {added(300, "caf\u00e9",
                     R"("special": false, "lstrip": false, "rstrip": false, "single_word": false, "normalized": true)"),
               added(301, "bi\u0301", kPlain)});
  EXPECT_EQ(t->encode("cafe\u0301!"), (V{300, '!'}));
  EXPECT_EQ(t->encode("caf\u00e9"), (V{300}));
  EXPECT_EQ(t->encode("bi\u0301"), (V{301}));
  EXPECT_EQ(t->encode("b\u00ed"), (V{'b', 0xc3, 0xad}));  // precomposed: not the raw token
  EXPECT_FALSE(t->is_special(300));
}

TEST(Bpe, MergesLowestRankFirstThenLeftmost) {
  TempDir d;
  auto t = load(d, {});
  EXPECT_EQ(t->encode("hell"), (V{258}));
  EXPECT_EQ(t->encode("lll"), (V{256, 'l'}));
  EXPECT_EQ(t->encode("llll"), (V{256, 256}));
  EXPECT_EQ(t->encode("hhelll"), (V{'h', 258, 'l'}));  // "l l" (rank 0) before "h e" (rank 1)
}

TEST(Bpe, LongPieceMergesInLinearithmicTime) {
  TempDir d;
  auto t = load(d, {});
  // One pre-tokenizer piece of 400,000 bytes: a quadratic merge loop would take hours.
  std::string s;
  for (int i = 0; i < 100000; ++i) s += "hell";
  const V ids = t->encode(s + "l");
  ASSERT_EQ(ids.size(), 100001u);
  EXPECT_EQ(ids.front(), 258);
  EXPECT_EQ(ids[99999], 258);
  EXPECT_EQ(ids.back(), 'l');
  EXPECT_EQ(t->decode(ids), s + "l");
}

TEST(ChatTemplate, DefaultTemplateFollowsModelTypeAndTokenizer) {
  TempDir d;
  auto plain = load(d, {});
  EXPECT_EQ(default_template_for("llama", plain.get()), "llama");
  EXPECT_EQ(default_template_for("llama"), "llama3");
  TempDir d3;
  auto l3 = load(d3, {added(300, "<|start_header_id|>", kPlain), added(301, "<|eot_id|>", kPlain)});
  EXPECT_EQ(default_template_for("llama", l3.get()), "llama3");
  EXPECT_EQ(default_template_for("qwen3_moe"), "qwen3");
  EXPECT_EQ(default_template_for("qwen2"), "qwen");
  EXPECT_EQ(default_template_for("mixtral"), "mistral");
  EXPECT_EQ(default_template_for("gpt_oss"), "raw");
  try {
    make_template("vicuna");
    FAIL();
  } catch (const moe::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("qwen3"), std::string::npos);  // lists the known names
  }
}
