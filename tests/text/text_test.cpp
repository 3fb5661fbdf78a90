// Tokenizer and template behaviour on a small hand-written byte-level BPE tokenizer.json, so
// every expectation can be checked by hand.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "testutil.h"
#include "text/byte_vocab.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

using namespace moe;
using namespace moe::text;
using moe::testing::TempDir;

namespace {

using moe::testing::byte_vocab;

std::unique_ptr<Tokenizer> make_tok(TempDir& d, const std::string& extra_added = "") {
  // merges: "h e" -> he (256), "l l" -> ll (257), "he ll" -> hell (258), "Ġ w" -> Ġw (259)
  std::string j = R"({"version": "1.0", "normalizer": {"type": "NFC"},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]},
    "decoder": {"type": "ByteLevel"},
    "added_tokens": [
      {"id": 300, "content": "<|im_start|>", "special": true, "lstrip": false, "rstrip": false, "single_word": false, "normalized": false},
      {"id": 301, "content": "<|im_end|>", "special": true, "lstrip": false, "rstrip": false, "single_word": false, "normalized": false},
      {"id": 302, "content": "<think>", "special": false, "lstrip": false, "rstrip": false, "single_word": false, "normalized": false},
      {"id": 303, "content": "</think>", "special": false, "lstrip": false, "rstrip": false, "single_word": false, "normalized": false},
      {"id": 304, "content": "[X]", "special": true, "lstrip": true, "rstrip": true, "single_word": false, "normalized": false})" +
                  extra_added + R"(],
    "model": {"type": "BPE", "ignore_merges": false, "vocab": {)" +
                  byte_vocab() + R"("he": 256, "ll": 257, "hell": 258, "Ġw": 259},
      "merges": ["h e", "l l", ["he", "ll"], "Ġ w"]}})";
  moe::testing::write_file(d.file("tokenizer.json"), j);
  moe::testing::write_file(d.file("tokenizer_config.json"), R"({"eos_token": "<|im_end|>", "bos_token": null})");
  return Tokenizer::load(d.path());
}

}  // namespace

TEST(Bpe, MergesByRank) {
  TempDir d;
  auto t = make_tok(d);
  EXPECT_EQ(t->encode("hello"), (std::vector<int32_t>{258, 'o'}));
  EXPECT_EQ(t->encode("hello world"), (std::vector<int32_t>{258, 'o', 259, 'o', 'r', 'l', 'd'}));
  EXPECT_EQ(t->decode(t->encode("hello world")), "hello world");
  EXPECT_EQ(t->eos_id(), 301);
  EXPECT_EQ(t->vocab_size(), 305);
}

TEST(Bpe, AddedTokensMatchedBeforeBpeWithStripFlags) {
  TempDir d;
  auto t = make_tok(d);
  EXPECT_EQ(t->encode("<|im_start|>he<|im_end|>"), (std::vector<int32_t>{300, 256, 301}));
  // [X] strips the spaces around it
  EXPECT_EQ(t->encode("he  [X]  he"), (std::vector<int32_t>{256, 304, 256}));
  EXPECT_TRUE(t->is_special(300));
  EXPECT_FALSE(t->is_special(302));
  EXPECT_EQ(t->decode({300, 256, 301}, true), "he");
  EXPECT_EQ(t->decode({300, 256, 301}, false), "<|im_start|>he<|im_end|>");
}

TEST(Bpe, NfcNormalisesBeforeEncoding) {
  TempDir d;
  auto t = make_tok(d);
  EXPECT_EQ(t->encode("e\xcc\x81"), t->encode("\xc3\xa9"));  // e + combining acute == é
}

TEST(Bpe, UnsupportedComponentsRejectedByName) {
  TempDir d;
  moe::testing::write_file(d.file("tokenizer.json"),
                           R"({"model": {"type": "Unigram", "vocab": []}, "normalizer": null})");
  try {
    Tokenizer::load(d.path());
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("Unigram"), std::string::npos);
  }
}

TEST(StreamDecoder, NeverEmitsHalfACharacter) {
  TempDir d;
  auto t = make_tok(d);
  // "é" is bytes c3 a9; "😀" is f0 9f 98 80: tokens are single bytes here.
  std::vector<int32_t> ids = t->encode("a\xc3\xa9\xf0\x9f\x98\x80");
  ASSERT_EQ(ids.size(), 7u);
  StreamDecoder s(*t);
  std::vector<std::string> out;
  out.reserve(ids.size());
  for (int32_t id : ids) out.push_back(s.push(id));
  EXPECT_EQ(out, (std::vector<std::string>{"a", "", "\xc3\xa9", "", "", "", "\xf0\x9f\x98\x80"}));
  EXPECT_EQ(s.flush(), "");
  // a dangling lead byte becomes U+FFFD at flush
  s.push(0xc3);
  EXPECT_EQ(s.flush(), "\xef\xbf\xbd");
  EXPECT_EQ(sanitize_utf8("a\xff"
                          "b"),
            "a\xef\xbf\xbd"
            "b");
}

TEST(ChatTemplate, ChatMlRendersAndMasksAssistantOnly) {
  TempDir d;
  auto t = make_tok(d);
  auto tmpl = make_template("qwen");
  std::vector<Message> msgs = {{"user", "he"}, {"assistant", "hell"}};
  RenderedChat r = tmpl->render(msgs, *t, false);
  std::string want =
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhe<|im_end|>\n"
      "<|im_start|>assistant\nhell<|im_end|>\n";
  EXPECT_EQ(t->decode(r.ids), want);
  // masked: "hell" (one token 258) and <|im_end|>; the final "\n" is not
  std::vector<int32_t> masked;
  for (size_t i = 0; i < r.ids.size(); ++i)
    if (r.loss_mask[i]) masked.push_back(r.ids[i]);
  EXPECT_EQ(masked, (std::vector<int32_t>{258, 301}));
  EXPECT_EQ(tmpl->stop_ids(*t), (std::vector<int32_t>{301}));
}

TEST(ChatTemplate, SystemOverrideReplacesTheDefaultAndEmptyMeansNone) {
  TempDir d;
  auto t = make_tok(d);
  const std::vector<Message> msgs = {{"user", "he"}};
  EXPECT_EQ(t->decode(make_template("qwen", "")->render(msgs, *t, true).ids),
            "<|im_start|>user\nhe<|im_end|>\n<|im_start|>assistant\n");
  auto other = make_template("qwen", "be brief");
  EXPECT_EQ(other->default_system(), "be brief");
  EXPECT_EQ(t->decode(other->render(msgs, *t, false).ids),
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhe<|im_end|>\n");
  EXPECT_EQ(make_template("llama3", "")->name(), "llama3");  // templates without a default are unchanged
  EXPECT_THROW(make_template("nope", ""), InputError);
}

TEST(ChatTemplate, Qwen3GenerationPromptHasEmptyThinkBlock) {
  TempDir d;
  auto t = make_tok(d);
  auto r = make_template("qwen3")->render({{"user", "he"}}, *t, true);
  EXPECT_EQ(t->decode(r.ids), "<|im_start|>user\nhe<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  for (auto m : r.loss_mask) EXPECT_EQ(m, 0);
  EXPECT_THROW(make_template("nope"), InputError);
  EXPECT_EQ(default_template_for("qwen2_moe"), "qwen");
  auto raw = make_template("raw")->render({{"user", "hello"}}, *t, true);
  EXPECT_EQ(raw.ids, t->encode("hello"));
}

TEST(Bpe, SpecialIdsFallBackToGenerationConfig) {
  TempDir d;
  make_tok(d);
  moe::testing::write_file(d.file("tokenizer_config.json"), "{}");
  moe::testing::write_file(d.file("generation_config.json"), R"({"eos_token_id": [301, 300], "bos_token_id": 300})");
  moe::testing::write_file(d.file("config.json"), R"({"eos_token_id": 5, "pad_token_id": 304})");
  auto t = Tokenizer::load(d.path());
  EXPECT_EQ(t->eos_id(), 301);
  EXPECT_EQ(t->bos_id(), 300);
  EXPECT_EQ(t->pad_id(), 304);
}

// Llama-3, Llama-2 and Mistral formats, written out by hand from the families' published
// templates (their Jinja sources ship in no package available here).
TEST(ChatTemplate, InstAndLlama3Formats) {
  TempDir d;
  auto base = make_tok(d, R"(,
      {"id": 305, "content": "<s>", "special": true, "lstrip": false, "rstrip": false, "single_word": false, "normalized": false},
      {"id": 306, "content": "</s>", "special": true, "lstrip": false, "rstrip": false, "single_word": false, "normalized": false},
      {"id": 307, "content": "<|begin_of_text|>", "special": true, "lstrip": false, "rstrip": false, "single_word": false, "normalized": false},
      {"id": 308, "content": "<|eot_id|>", "special": true, "lstrip": false, "rstrip": false, "single_word": false, "normalized": false})");
  (void)base;
  moe::testing::write_file(d.file("tokenizer_config.json"), R"({"bos_token": "<s>", "eos_token": "</s>"})");
  auto t = Tokenizer::load(d.path());
  std::vector<Message> conv = {{"system", "S"}, {"user", "hi"}, {"assistant", "yo"}, {"user", "again"}};
  EXPECT_EQ(t->decode(make_template("llama")->render(conv, *t, true).ids),
            "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nhi [/INST] yo </s><s>[INST] again [/INST]");
  EXPECT_EQ(t->decode(make_template("mistral")->render(conv, *t, true).ids),
            "<s>[INST] S\n\nhi [/INST]yo</s>[INST] again [/INST]");
  auto l3 = make_template("llama3")->render({{"user", " hi\n"}, {"assistant", "yo"}}, *t, false);
  EXPECT_EQ(
      t->decode(l3.ids),
      "<s><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
      "yo<|eot_id|>");
  // the assistant reply and its end-of-turn token carry the loss, nothing else
  std::vector<int32_t> masked;
  for (size_t i = 0; i < l3.ids.size(); ++i)
    if (l3.loss_mask[i]) masked.push_back(l3.ids[i]);
  EXPECT_EQ(t->decode(masked), "yo<|eot_id|>");
  auto m = make_template("mistral")->render(conv, *t, false);
  masked.clear();
  for (size_t i = 0; i < m.ids.size(); ++i)
    if (m.loss_mask[i]) masked.push_back(m.ids[i]);
  EXPECT_EQ(t->decode(masked), "yo</s>");
}
