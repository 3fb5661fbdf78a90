// Dataset specs, row formats and labels, #N sampling, self-cognition substitution, packing and
// the data loader's deterministic, resumable order.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <set>

#include "testutil.h"
#include "train/data_loader.h"
#include "train/dataset.h"

namespace moe::train {
namespace {

std::string tiny_dir() {
  const char* src = std::getenv("MOE_SOURCE_DIR");
  return std::string(src ? src : ".") + "/configs/tiny-moe";
}

struct Fixture : ::testing::Test {
  std::unique_ptr<text::Tokenizer> tok = text::Tokenizer::load(tiny_dir());
  std::unique_ptr<text::ChatTemplate> tmpl = text::make_template("qwen3");
  testing::TempDir dir;
  Datasets load(const DatasetOptions& o) { return load_datasets(o, *tok, *tmpl); }
  std::string file(const std::string& name, const std::string& body) {
    testing::write_file(dir.file(name), body);
    return dir.file(name);
  }
};

using Dataset = Fixture;

// The label of position t is tokens[t + 1] exactly where the template trains on it.
TEST_F(Dataset, LabelsAreTheShiftedAssistantTokens) {
  DatasetOptions o;
  o.specs = {file("a.jsonl",
                  R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},)"
                  R"( {"role": "user", "content": "more"}, {"role": "assistant", "content": "sure"}]})"
                  "\n")};
  const auto d = load(o);
  ASSERT_EQ(d.train.size(), 1u);
  const Sample& s = d.train[0];
  auto r = tmpl->render({{"user", "hi"}, {"assistant", "yo"}, {"user", "more"}, {"assistant", "sure"}}, *tok, false);
  ASSERT_EQ(s.tokens, r.ids);
  int trained = 0;
  for (size_t t = 0; t + 1 < s.tokens.size(); ++t) {
    EXPECT_EQ(s.labels[t], r.loss_mask[t + 1] ? s.tokens[t + 1] : -100) << t;
    trained += s.labels[t] >= 0;
  }
  EXPECT_EQ(s.labels.back(), -100);
  // Both assistant turns (and their end tokens) are trained, nothing else.
  EXPECT_EQ(trained, std::count(r.loss_mask.begin() + 1, r.loss_mask.end(), 1));
  EXPECT_GT(trained, 2);
}

TEST_F(Dataset, EveryRowFormatAndPretrainLabelsEverything) {
  DatasetOptions o;
  o.specs = {file("f.jsonl", R"({"query": "q", "response": "r", "history": [["a", "b"]], "system": "s"})"
                             "\n"
                             R"({"instruction": "do", "input": "this", "output": "done"})"
                             "\n")};
  EXPECT_EQ(load(o).train.size(), 2u);
  o.specs = {file("t.jsonl", R"({"text": "plain words for pre-training"})"
                             "\n")};
  o.pretrain = true;
  const auto d = load(o);
  ASSERT_EQ(d.train.size(), 1u);
  const auto& s = d.train[0];
  EXPECT_TRUE(std::all_of(s.labels.begin(), s.labels.end() - 1, [](int32_t l) { return l >= 0; }));
  EXPECT_EQ(s.tokens.back(), tok->eos_id());
}

TEST_F(Dataset, SamplingRepeatsAndSubsamples) {
  DatasetOptions o;
  std::string rows;
  for (int i = 0; i < 5; ++i)
    rows += R"({"query": "q)" + std::to_string(i) +
            R"(", "response": "r"})"
            "\n";
  const std::string f = file("five.jsonl", rows);
  o.specs = {f + "#12"};
  EXPECT_EQ(load(o).train.size(), 12u);  // 2 full passes + 2 sampled
  o.specs = {f + "#3"};
  auto d = load(o);
  ASSERT_EQ(d.train.size(), 3u);
  std::set<std::vector<int32_t>> distinct;
  for (const auto& s : d.train) distinct.insert(s.tokens);
  EXPECT_EQ(distinct.size(), 3u);  // without replacement
  o.specs = {f}, o.split_dataset_ratio = 0.4;
  d = load(o);
  EXPECT_EQ(d.train.size(), 3u);
  EXPECT_EQ(d.val.size(), 2u);
}

TEST_F(Dataset, SelfCognitionFillsNameAndAuthorPerLanguage) {
  DatasetOptions o;
  o.specs = {"self-cognition"};
  o.model_name = {"小黄", "Xiao Huang"}, o.model_author = {"魔搭", "ModelScope"};
  const auto d = load(o);
  std::string all;
  for (const auto& s : d.train) all += tok->decode(s.tokens);
  EXPECT_NE(all.find("Xiao Huang"), std::string::npos);
  EXPECT_NE(all.find("小黄"), std::string::npos);
  EXPECT_NE(all.find("ModelScope"), std::string::npos);
  EXPECT_EQ(all.find("{{NAME}}"), std::string::npos);
  EXPECT_EQ(all.find("{{AUTHOR}}"), std::string::npos);
}

TEST_F(Dataset, TruncationStrategies) {
  DatasetOptions o;
  o.specs = {file("long.jsonl", R"({"query": "a b c d e f g h i j k l m n o p", "response": "q r s t u v w x y z"})"
                                "\n"
                                R"({"query": "a", "response": "b"})"
                                "\n")};
  o.max_length = 24;
  auto d = load(o);
  EXPECT_EQ(d.dropped_too_long, 1);
  EXPECT_EQ(d.train.size(), 1u);
  o.truncation_strategy = "left";
  d = load(o);
  ASSERT_EQ(d.train.size(), 2u);
  for (const auto& s : d.train) EXPECT_LE(s.tokens.size(), 24u);
}

TEST_F(Dataset, ErrorsNameTheSpecOrLine) {
  DatasetOptions o;
  o.specs = {"AI-ModelScope/alpaca-gpt4-data-en"};
  EXPECT_NE(testing::input_error([&] { load(o); }).find("local files"), std::string::npos);
  o.specs = {file("bad.jsonl", "{\"query\": \"q\", \"response\": \"r\"}\n{nope\n")};
  EXPECT_NE(testing::input_error([&] { load(o); }).find("bad.jsonl:2"), std::string::npos);
  o.specs = {file("odd.jsonl", "{\"question\": \"q\"}\n")};
  EXPECT_NE(testing::input_error([&] { load(o); }).find("odd.jsonl:1"), std::string::npos);
}

std::vector<Sample> samples(int n) {
  std::vector<Sample> out;
  for (int i = 0; i < n; ++i) {
    Sample s;
    for (int t = 0; t < 3 + (i * 7) % 20; ++t) s.tokens.push_back(i), s.labels.push_back(i);
    out.push_back(s);
  }
  return out;
}

TEST(DataLoader, PackingKeepsEverySampleOnceWithinMaxLength) {
  const auto s = samples(40);
  DataLoader dl(s, 1, true, 32, 7);
  std::multiset<int32_t> seen;
  for (int64_t r = 0; r < dl.rows_per_epoch(); ++r) {
    const MicroBatch mb = dl.next();
    EXPECT_LE(mb.tokens.size(), 32u);
    for (size_t q = 0; q + 1 < mb.cu_seqlens.size(); ++q) {
      seen.insert(mb.tokens[size_t(mb.cu_seqlens[q])]);
      for (int32_t t = mb.cu_seqlens[q]; t < mb.cu_seqlens[q + 1]; ++t)
        EXPECT_EQ(mb.position_ids[size_t(t)], t - mb.cu_seqlens[q]);  // positions restart per sample
    }
  }
  EXPECT_EQ(seen.size(), 40u);
  for (int i = 0; i < 40; ++i) EXPECT_EQ(seen.count(i), 1u) << i;
  EXPECT_LT(dl.rows_per_epoch(), 40);
}

TEST(DataLoader, DeterministicAndResumable) {
  const auto s = samples(10);
  DataLoader a(s, 3, false, 64, 5), b(s, 3, false, 64, 5);
  for (int i = 0; i < 5; ++i) a.next();  // crosses into epoch 2
  const LoaderPosition p = a.position();
  EXPECT_EQ(p.epoch, 1);
  b.restore(p);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(a.next().tokens, b.next().tokens);
  DataLoader c(s, 3, false, 64, 6);
  DataLoader d(s, 3, false, 64, 5);
  EXPECT_NE(c.next().tokens, d.next().tokens);  // the seed changes the order
}

}  // namespace
}  // namespace moe::train
