// Dataset specs (#N sampling, built-in sets, hub ids), row formats to tokens and labels through
// the chat template, system precedence, loss overrides, truncation, splits and errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "testutil.h"
#include "text/chat_rows.h"
#include "train/dataset.h"

namespace moe::train {
namespace {

std::string tiny_dir() {
  const char* src = std::getenv("MOE_SOURCE_DIR");
  return std::string(src ? src : ".") + "/configs/tiny-moe";
}

struct DatasetRows : ::testing::Test {
  std::unique_ptr<text::Tokenizer> tok = text::Tokenizer::load(tiny_dir());
  std::unique_ptr<text::ChatTemplate> tmpl = text::make_template("qwen3");
  testing::TempDir dir;
  Datasets load(const DatasetOptions& o) { return load_datasets(o, *tok, *tmpl); }
  Datasets load(const DatasetOptions& o, const text::ChatTemplate& t) { return load_datasets(o, *tok, t); }
  std::string file(const std::string& name, const std::string& body) {
    testing::write_file(dir.file(name), body);
    return dir.file(name);
  }
  // The sample the template makes of `msgs` with its own loss mask (sft).
  Sample expected(const std::vector<text::Message>& msgs, const text::ChatTemplate& t) const {
    auto r = t.render(msgs, *tok, false);
    Sample s{r.ids, std::vector<int32_t>(r.ids.size(), -100)};
    for (size_t i = 0; i + 1 < r.ids.size(); ++i)
      if (r.loss_mask[i + 1]) s.labels[i] = r.ids[i + 1];
    return s;
  }
  Sample expected(const std::vector<text::Message>& msgs) const { return expected(msgs, *tmpl); }
  // One row per line, each {"query": "q<i>", "response": "r<i>"}.
  std::string numbered(const std::string& name, int n) {
    std::string rows;
    for (int i = 0; i < n; ++i)
      rows += R"({"query": "q)" + std::to_string(i) +
              R"(", "response": "r"})"
              "\n";
    return file(name, rows);
  }
  // Which numbered row a sample came from.
  int row_of(const Sample& s) const {
    const std::string text = tok->decode(s.tokens);
    const size_t p = text.find("user\nq");
    return std::stoi(text.substr(p + 6));
  }
};

void expect_same(const Sample& got, const Sample& want) {
  EXPECT_EQ(got.tokens, want.tokens);
  EXPECT_EQ(got.labels, want.labels);
}

int64_t trained(const Sample& s) {
  return std::count_if(s.labels.begin(), s.labels.end(), [](int32_t l) { return l != -100; });
}

TEST(DatasetSpecs, RightSplitOnHashAndAliases) {
  auto s = parse_dataset_spec("data/a.jsonl#10");
  EXPECT_EQ(s.name, "data/a.jsonl");
  EXPECT_EQ(s.n, 10);
  s = parse_dataset_spec("odd#name.jsonl#3");
  EXPECT_EQ(s.name, "odd#name.jsonl");
  EXPECT_EQ(s.n, 3);
  s = parse_dataset_spec("swift/self-cognition#500");
  EXPECT_EQ(s.name, "self-cognition");
  EXPECT_EQ(s.n, 500);
  s = parse_dataset_spec("self-cognition");
  EXPECT_EQ(s.name, "self-cognition");
  EXPECT_EQ(s.n, -1);
  EXPECT_EQ(parse_dataset_spec("modelscope/self-cognition").name, "self-cognition");
  EXPECT_EQ(parse_dataset_spec("dummy#7").n, 7);
  EXPECT_NE(testing::input_error([] { parse_dataset_spec("a.jsonl#x"); }).find("row count"), std::string::npos);
  EXPECT_NE(testing::input_error([] { parse_dataset_spec("a.jsonl#0"); }).find("positive"), std::string::npos);
  EXPECT_NE(testing::input_error([] { parse_dataset_spec("a.jsonl#"); }).find("a.jsonl#"), std::string::npos);
  // An existing file whose name holds '#' is taken whole.
  testing::TempDir d;
  testing::write_file(d.file("x#2"), "{}\n");
  s = parse_dataset_spec(d.file("x#2"));
  EXPECT_EQ(s.name, d.file("x#2"));
  EXPECT_EQ(s.n, -1);
}

TEST_F(DatasetRows, HashNRepeatsWholeSetThenSamplesTheRest) {
  const std::string f = numbered("five.jsonl", 5);
  DatasetOptions o;
  o.specs = {f + "#13"};  // 2 full passes + 3 distinct rows
  auto d = load(o);
  ASSERT_EQ(d.train.size(), 13u);
  std::map<int, int> count;
  for (const auto& s : d.train) ++count[row_of(s)];
  ASSERT_EQ(count.size(), 5u);
  int threes = 0;
  for (auto [row, n] : count) {
    EXPECT_TRUE(n == 2 || n == 3) << row << " x" << n;
    threes += n == 3;
  }
  EXPECT_EQ(threes, 3);
  o.specs = {f + "#5"};
  d = load(o);
  count.clear();
  for (const auto& s : d.train) ++count[row_of(s)];
  EXPECT_EQ(count.size(), 5u);
}

TEST_F(DatasetRows, TokenisedOnSeveralThreadsAsOnOne) {
  // --dataset_num_proc: the same samples in the same order, and the first bad row's error.
  const std::string f = numbered("many.jsonl", 300);
  DatasetOptions o;
  o.specs = {f, "self-cognition#40"};
  o.model_name = {"n"}, o.model_author = {"a"};
  const auto one = load(o);
  o.num_proc = 4;
  const auto four = load(o);
  ASSERT_EQ(four.train.size(), one.train.size());
  ASSERT_EQ(one.train.size(), 340u);
  for (size_t i = 0; i < one.train.size(); ++i) expect_same(four.train[i], one.train[i]);
  const std::string bad = file("bad.jsonl", std::string(R"({"query": "q", "response": "r"})") + "\n" +
                                                R"({"prompt": "no"})" + "\n" + R"({"nothing": 1})" + "\n");
  o.specs = {bad};
  o.num_proc = 1;
  const std::string e1 = testing::input_error([&] { load(o); });
  o.num_proc = 3;
  EXPECT_EQ(testing::input_error([&] { load(o); }), e1);
  EXPECT_NE(e1.find("bad.jsonl:2"), std::string::npos) << e1;
}

TEST_F(DatasetRows, HashNBelowSizeSamplesWithoutReplacementBySeed) {
  const std::string f = numbered("twenty.jsonl", 20);
  DatasetOptions o;
  o.specs = {f + "#6"};
  auto pick = [&](uint64_t seed) {
    o.seed = seed;
    std::vector<int> rows;
    for (const auto& s : load(o).train) rows.push_back(row_of(s));
    return rows;
  };
  const auto a = pick(1), b = pick(1), c = pick(2);
  ASSERT_EQ(a.size(), 6u);
  EXPECT_EQ(std::set<int>(a.begin(), a.end()).size(), 6u);  // no row twice
  EXPECT_EQ(a, b);                                          // the seed fixes the sample
  EXPECT_NE(a, c);
}

TEST_F(DatasetRows, EveryRowFormatTokenizesAsTheTemplateRendersIt) {
  DatasetOptions o;
  o.specs = {file("rows.jsonl",
                  R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})"
                  "\n"
                  R"({"query": "q2", "response": "r2", "history": [["q1", "r1"]], "system": "s"})"
                  "\n"
                  R"({"instruction": "do", "input": "this", "output": "done"})"
                  "\n"
                  R"({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]})"
                  "\n")};
  const auto d = load(o);
  ASSERT_EQ(d.train.size(), 4u);
  EXPECT_EQ(d.rows_read, 4);
  expect_same(d.train[0], expected({{"user", "hi"}, {"assistant", "yo"}}));
  expect_same(d.train[1],
              expected({{"system", "s"}, {"user", "q1"}, {"assistant", "r1"}, {"user", "q2"}, {"assistant", "r2"}}));
  expect_same(d.train[2], expected({{"user", "do\nthis"}, {"assistant", "done"}}));
  expect_same(d.train[3], expected({{"user", "a"}, {"assistant", "b"}}));
  // Both replies of the multi-turn row are trained: r1 and r2 with their end tokens.
  const auto r = tmpl->render(
      {{"system", "s"}, {"user", "q1"}, {"assistant", "r1"}, {"user", "q2"}, {"assistant", "r2"}}, *tok, false);
  const int64_t ones = std::count(r.loss_mask.begin(), r.loss_mask.end(), 1);
  EXPECT_EQ(trained(d.train[1]), ones);
  const int64_t r1 = int64_t(tok->encode("r1").size()), r2 = int64_t(tok->encode("r2").size());
  EXPECT_EQ(ones, r1 + r2 + 2);  // each reply + its <|im_end|>
  // A .json file holds an array of the same rows.
  o.specs = {file("rows.json", R"([{"query": "hi", "response": "yo"}, {"text": "t"}])")};
  const auto j = load(o);
  ASSERT_EQ(j.train.size(), 2u);
  expect_same(j.train[0], expected({{"user", "hi"}, {"assistant", "yo"}}));
  // sft on a text row: an empty user turn, the text is the reply.
  expect_same(j.train[1], expected({{"user", ""}, {"assistant", "t"}}));
}

TEST_F(DatasetRows, JsonLinesUnderAJsonName) {
  DatasetOptions o;
  o.specs = {file("lines.json", "{\"query\": \"a\", \"response\": \"b\"}\n{\"query\": \"c\", \"response\": \"d\"}\n")};
  EXPECT_EQ(load(o).train.size(), 2u);
}

TEST_F(DatasetRows, PretrainTextIsBosTextEosAndEveryTokenTrained) {
  DatasetOptions o;
  o.pretrain = true;
  o.specs = {file("t.jsonl", R"({"text": "plain words for pre-training"})"
                             "\n"
                             R"({"messages": [{"role": "assistant", "content": "more words"}]})"
                             "\n"
                             R"({"query": "q", "response": "r"})"
                             "\n")};
  const auto d = load(o);
  ASSERT_EQ(d.train.size(), 3u);
  std::vector<int32_t> want;
  if (tok->bos_id() >= 0) want.push_back(tok->bos_id());
  const auto body = tok->encode("plain words for pre-training");
  want.insert(want.end(), body.begin(), body.end());
  want.push_back(tok->eos_id());
  EXPECT_EQ(d.train[0].tokens, want);
  for (const auto& s : d.train) {
    for (size_t t = 0; t + 1 < s.tokens.size(); ++t) EXPECT_EQ(s.labels[t], s.tokens[t + 1]) << t;
    EXPECT_EQ(s.labels.back(), -100);
  }
  EXPECT_EQ(d.train[1].tokens.back(), tok->eos_id());
  // A chat row in pt: the template's tokens (no default system), all trained.
  EXPECT_EQ(d.train[2].tokens, tmpl->render({{"user", "q"}, {"assistant", "r"}}, *tok, false).ids);
}

TEST_F(DatasetRows, SystemPrecedenceRowThenFlagThenTemplateDefault) {
  const auto qwen = text::make_template("qwen");  // default system "You are a helpful assistant."
  ASSERT_FALSE(qwen->default_system().empty());
  DatasetOptions o;
  o.specs = {file("s.jsonl", R"({"query": "q", "response": "r"})"
                             "\n"
                             R"({"query": "q", "response": "r", "system": "row system"})"
                             "\n")};
  auto d = load(o, *qwen);
  ASSERT_EQ(d.train.size(), 2u);
  expect_same(d.train[0], expected({{"system", qwen->default_system()}, {"user", "q"}, {"assistant", "r"}}, *qwen));
  expect_same(d.train[1], expected({{"system", "row system"}, {"user", "q"}, {"assistant", "r"}}, *qwen));
  o.system_given = true, o.system = "flag system";
  d = load(o, *qwen);
  expect_same(d.train[0], expected({{"system", "flag system"}, {"user", "q"}, {"assistant", "r"}}, *qwen));
  expect_same(d.train[1], expected({{"system", "row system"}, {"user", "q"}, {"assistant", "r"}}, *qwen));
  // qwen3 has no default: nothing is added without --system.
  o.system_given = false;
  d = load(o);
  expect_same(d.train[0], expected({{"user", "q"}, {"assistant", "r"}}));
}

TEST_F(DatasetRows, PerMessageLossFalseMasksThatReply) {
  DatasetOptions o;
  o.specs = {file(
      "l.jsonl",
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "first", "loss": false},)"
      R"( {"role": "user", "content": "b"}, {"role": "assistant", "content": "second"}]})"
      "\n"
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x", "loss": false}]})"
      "\n")};
  auto d = load(o);
  ASSERT_EQ(d.train.size(), 1u);  // the second row has nothing left to train
  EXPECT_EQ(d.dropped_no_loss, 1);
  const Sample& s = d.train[0];
  const int64_t second = int64_t(tok->encode("second").size()) + 1;  // + <|im_end|>
  EXPECT_EQ(trained(s), second);
  // The trained labels are exactly the tail reply.
  const Sample all = expected({{"user", "a"}, {"assistant", "first"}, {"user", "b"}, {"assistant", "second"}});
  ASSERT_EQ(s.tokens, all.tokens);
  EXPECT_EQ(trained(all), second + int64_t(tok->encode("first").size()) + 1);
  // pt trains everything except the marked reply.
  o.pretrain = true;
  d = load(o);
  ASSERT_EQ(d.train.size(), 2u);
  EXPECT_EQ(trained(d.train[0]), int64_t(d.train[0].tokens.size()) - 1 - (int64_t(tok->encode("first").size()) + 1));
}

TEST_F(DatasetRows, SelfCognitionFillsPlaceholdersPerLanguage) {
  // The shipped rows: bilingual, about half generic, placeholders only as {{NAME}}/{{AUTHOR}}.
  int zh = 0, en = 0, generic = 0, total = 0;
  for (const auto& line : [&] {
         std::vector<std::string> v;
         const std::string& s = self_cognition_jsonl();
         for (size_t p = 0, e; p < s.size(); p = e + 1) {
           e = s.find('\n', p);
           if (e == std::string::npos) e = s.size();
           if (e > p) v.push_back(s.substr(p, e - p));
         }
         return v;
       }()) {
    const auto j = nlohmann::json::parse(line);
    ++total;
    (j.at("tag") == "zh" ? zh : en) += 1;
    const std::string all = j.at("query").get<std::string>() + j.at("response").get<std::string>();
    generic += all.find("{{") == std::string::npos;
    for (size_t p = all.find("{{"); p != std::string::npos; p = all.find("{{", p + 2))
      EXPECT_TRUE(all.compare(p, 8, "{{NAME}}") == 0 || all.compare(p, 10, "{{AUTHOR}}") == 0) << line;
  }
  EXPECT_GE(total, 90);
  EXPECT_GE(zh, total / 3);
  EXPECT_GE(en, total / 3);
  EXPECT_GE(generic, total / 3);
  EXPECT_LE(generic, 2 * total / 3);

  DatasetOptions o;
  o.specs = {"swift/self-cognition"};
  o.model_name = {"小黄", "Xiao Huang"}, o.model_author = {"魔搭", "ModelScope"};
  auto d = load(o);
  EXPECT_EQ(int64_t(d.train.size()), total);
  int zh_named = 0, en_named = 0;
  for (const auto& s : d.train) {
    const std::string text = tok->decode(s.tokens);
    EXPECT_EQ(text.find("{{"), std::string::npos) << text;
    const bool has_zh = text.find("小黄") != std::string::npos || text.find("魔搭") != std::string::npos;
    const bool has_en = text.find("Xiao Huang") != std::string::npos || text.find("ModelScope") != std::string::npos;
    EXPECT_FALSE(has_zh && has_en) << text;  // each row takes its own language's value
    zh_named += has_zh, en_named += has_en;
  }
  EXPECT_GT(zh_named, 10);
  EXPECT_GT(en_named, 10);
  // One value serves both languages; #N samples as for files.
  o.specs = {"self-cognition#250"}, o.model_name = {"moe-robot"}, o.model_author = {"moectl"};
  d = load(o);
  EXPECT_EQ(d.train.size(), 250u);
  int named = 0;
  for (const auto& s : d.train) named += tok->decode(s.tokens).find("moe-robot") != std::string::npos;
  EXPECT_GT(named, 50);
}

TEST_F(DatasetRows, TruncationDeleteLeftRight) {
  DatasetOptions o;
  o.specs = {file("long.jsonl", R"({"query": "a b c", "response": "q r s t u v w x y z and some more words"})"
                                "\n"
                                R"({"query": "a", "response": "b"})"
                                "\n")};
  const Sample full = expected({{"user", "a b c"}, {"assistant", "q r s t u v w x y z and some more words"}});
  const Sample small = expected({{"user", "a"}, {"assistant", "b"}});
  const int L = int(full.tokens.size()) - 4;  // cuts into the reply
  o.max_length = L;
  ASSERT_LE(small.tokens.size(), size_t(L));
  auto d = load(o);
  EXPECT_EQ(d.dropped_too_long, 1);
  ASSERT_EQ(d.train.size(), 1u);
  expect_same(d.train[0], small);
  o.truncation_strategy = "left";
  d = load(o);
  ASSERT_EQ(d.train.size(), 2u);
  EXPECT_EQ(d.dropped_too_long, 0);
  EXPECT_EQ(d.train[0].tokens, std::vector<int32_t>(full.tokens.end() - L, full.tokens.end()));
  EXPECT_EQ(d.train[0].labels, std::vector<int32_t>(full.labels.end() - L, full.labels.end()));
  o.truncation_strategy = "right";
  d = load(o);
  ASSERT_EQ(d.train.size(), 2u);
  EXPECT_EQ(d.train[0].tokens, std::vector<int32_t>(full.tokens.begin(), full.tokens.begin() + L));
  std::vector<int32_t> labels(full.labels.begin(), full.labels.begin() + L);
  labels.back() = -100;  // its target was cut off
  EXPECT_EQ(d.train[0].labels, labels);
  EXPECT_GT(trained(d.train[0]), 0);
  // Cut right before the reply's first token: nothing left to train, the row is dropped and
  // counted (dummy#1 keeps the set non-empty).
  const auto first = std::find_if(full.labels.begin(), full.labels.end(), [](int32_t l) { return l != -100; });
  o.max_length = int(first - full.labels.begin()) + 1;
  o.specs = {file("long_only.jsonl", R"({"query": "a b c", "response": "q r s t u v w x y z and some more words"})"
                                     "\n"),
             "dummy#1"};
  d = load(o);
  EXPECT_EQ(d.dropped_no_loss, 1);
  ASSERT_EQ(d.train.size(), 1u);
  EXPECT_EQ(d.train[0].tokens.size(), size_t(o.max_length));
  o.truncation_strategy = "split";
  EXPECT_NE(testing::input_error([&] { load(o); }).find("--truncation_strategy"), std::string::npos);
}

TEST_F(DatasetRows, SplitRatioAndValDataset) {
  DatasetOptions o;
  o.specs = {numbered("ten.jsonl", 10)};
  o.split_dataset_ratio = 0.2;
  auto d = load(o);
  EXPECT_EQ(d.train.size(), 8u);
  ASSERT_EQ(d.val.size(), 2u);
  std::set<int> rows;
  for (const auto& s : d.train) rows.insert(row_of(s));
  for (const auto& s : d.val) rows.insert(row_of(s));
  EXPECT_EQ(rows.size(), 10u);  // a partition
  o.split_dataset_ratio = 0;
  o.val_specs = {numbered("three.jsonl", 3)};
  d = load(o);
  EXPECT_EQ(d.train.size(), 10u);
  EXPECT_EQ(d.val.size(), 3u);
  o.split_dataset_ratio = 0.1;
  EXPECT_NE(testing::input_error([&] { load(o); }).find("--val_dataset"), std::string::npos);
}

TEST_F(DatasetRows, DummyIsRandomSequencesOfMaxLength) {
  DatasetOptions o;
  o.specs = {"dummy#4"};
  o.max_length = 32;
  const auto d = load(o);
  ASSERT_EQ(d.train.size(), 4u);
  for (const auto& s : d.train) {
    ASSERT_EQ(s.tokens.size(), 32u);
    for (size_t t = 0; t + 1 < 32; ++t) EXPECT_EQ(s.labels[t], s.tokens[t + 1]);
    EXPECT_EQ(s.labels.back(), -100);
    for (int32_t id : s.tokens) EXPECT_TRUE(id >= 0 && id < tok->vocab_size());
  }
  EXPECT_NE(d.train[0].tokens, d.train[1].tokens);
  o.specs = {"dummy"};
  EXPECT_NE(testing::input_error([&] { load(o); }).find("dummy#"), std::string::npos);
}

TEST_F(DatasetRows, ErrorsNameTheFileLineAndField) {
  DatasetOptions o;
  o.specs = {"AI-ModelScope/alpaca-gpt4-data-en#500"};
  std::string e = testing::input_error([&] { load(o); });
  EXPECT_NE(e.find("local files"), std::string::npos) << e;
  EXPECT_NE(e.find("download"), std::string::npos) << e;  // the fix
  o.specs = {"hf::tatsu-lab/alpaca"};
  EXPECT_NE(testing::input_error([&] { load(o); }).find("local files"), std::string::npos);
  o.specs = {dir.file("missing.jsonl")};
  e = testing::input_error([&] { load(o); });
  EXPECT_NE(e.find("missing.jsonl"), std::string::npos) << e;
  EXPECT_NE(e.find("no such file"), std::string::npos) << e;
  o.specs = {file("bad.jsonl", "{\"query\": \"q\", \"response\": \"r\"}\n\n{nope\n")};
  EXPECT_NE(testing::input_error([&] { load(o); }).find("bad.jsonl:3"), std::string::npos);
  o.specs = {file("field.jsonl", "{\"query\": \"q\", \"response\": \"r\"}\n{\"query\": [1], \"response\": \"r\"}\n")};
  e = testing::input_error([&] { load(o); });
  EXPECT_NE(e.find("field.jsonl:2"), std::string::npos) << e;
  EXPECT_NE(e.find("'query'"), std::string::npos) << e;
  o.specs = {file("arr.json", R"([{"query": "q", "response": "r"}, {"nothing": 1}])")};
  EXPECT_NE(testing::input_error([&] { load(o); }).find("arr.json[1]"), std::string::npos);
  o.specs = {file("empty.jsonl", "\n")};
  EXPECT_NE(testing::input_error([&] { load(o); }).find("no rows"), std::string::npos);
  o.specs = {file("noreply.jsonl", "{\"query\": \"only a question\"}\n")};
  EXPECT_NE(testing::input_error([&] { load(o); }).find("no trainable rows"), std::string::npos);
}

}  // namespace
}  // namespace moe::train
