// The one dataset-row parser shared by infer and training: every swift row format, per-message
// loss overrides, and errors that name the row and the field.
#include <gtest/gtest.h>

#include "testutil.h"
#include "text/chat_rows.h"

namespace moe::text {
namespace {

using nlohmann::json;

std::vector<std::string> roles(const std::vector<Message>& m) {
  std::vector<std::string> r;
  r.reserve(m.size());
  for (const auto& x : m) r.push_back(x.role + ":" + x.content);
  return r;
}

TEST(ChatRows, MessagesKeepEveryTurnAndTheRowSystem) {
  const auto c = parse_conversation_row(json::parse(R"({"system": "be brief", "messages": [
      {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]})"),
                                        "f.jsonl:1");
  EXPECT_EQ(roles(c.messages),
            (std::vector<std::string>{"system:be brief", "user:a", "assistant:b", "user:c", "assistant:d"}));
  EXPECT_EQ(c.loss, (std::vector<int8_t>{-1, -1, -1, -1, -1}));
  // A system message in the list wins over the row's field.
  const auto d = parse_conversation(json::parse(R"({"system": "x", "messages": [{"role": "system", "content": "y"},
      {"role": "user", "content": "q"}]})"),
                                    "w");
  EXPECT_EQ(roles(d), (std::vector<std::string>{"system:y", "user:q"}));
}

TEST(ChatRows, ShareGptFlavours) {
  const auto a = parse_conversation(json::parse(R"({"system_prompt": "s", "conversations": [
      {"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]})"),
                                    "w");
  EXPECT_EQ(roles(a), (std::vector<std::string>{"system:s", "user:hi", "assistant:yo"}));
  const auto b = parse_conversation(
      json::parse(
          R"({"system": "s", "conversation": [{"human": "1", "assistant": "2"}, {"human": "3", "assistant": "4"}]})"),
      "w");
  EXPECT_EQ(roles(b), (std::vector<std::string>{"system:s", "user:1", "assistant:2", "user:3", "assistant:4"}));
}

TEST(ChatRows, QueryResponseHistory) {
  const auto c = parse_conversation(
      json::parse(R"({"system": "s", "query": "q2", "response": "r2", "history": [["q1", "r1"]]})"), "w");
  EXPECT_EQ(roles(c), (std::vector<std::string>{"system:s", "user:q1", "assistant:r1", "user:q2", "assistant:r2"}));
  // A list of responses takes the first.
  const auto l = parse_conversation(json::parse(R"({"query": "q", "response": ["a", "b"]})"), "w");
  EXPECT_EQ(roles(l), (std::vector<std::string>{"user:q", "assistant:a"}));
}

TEST(ChatRows, AlpacaJoinsInstructionAndInput) {
  EXPECT_EQ(roles(parse_conversation(json::parse(R"({"instruction": "do", "input": "this", "output": "done"})"), "w")),
            (std::vector<std::string>{"user:do\nthis", "assistant:done"}));
  EXPECT_EQ(roles(parse_conversation(json::parse(R"({"system": "s", "instruction": "do", "output": "ok"})"), "w")),
            (std::vector<std::string>{"system:s", "user:do", "assistant:ok"}));
  EXPECT_EQ(roles(parse_conversation(json::parse(R"({"instruction": "", "input": "only", "output": "ok"})"), "w")),
            (std::vector<std::string>{"user:only", "assistant:ok"}));
}

TEST(ChatRows, TextIsOneAssistantTurn) {
  EXPECT_EQ(roles(parse_conversation(json::parse(R"({"text": "plain words"})"), "w")),
            (std::vector<std::string>{"assistant:plain words"}));
  EXPECT_NE(
      testing::input_error([] { parse_chat_row(json::parse(R"({"text": "x"})"), "f.jsonl:3"); }).find("f.jsonl:3"),
      std::string::npos);
}

TEST(ChatRows, LossOverridesOnAssistantMessages) {
  const auto c = parse_conversation_row(json::parse(R"({"messages": [
      {"role": "user", "content": "a", "loss": true}, {"role": "assistant", "content": "b", "loss": false},
      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d", "loss": true}]})"),
                                        "w");
  EXPECT_EQ(c.loss, (std::vector<int8_t>{-1, 0, -1, 1}));  // ignored on a user message
  const std::string e = testing::input_error([] {
    parse_conversation_row(json::parse(R"({"messages": [{"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "loss": "no"}]})"),
                           "d.jsonl:7");
  });
  EXPECT_NE(e.find("d.jsonl:7"), std::string::npos) << e;
  EXPECT_NE(e.find("messages[1].loss"), std::string::npos) << e;
}

TEST(ChatRows, ApplyLossOverridesMasksTheMarkedReply) {
  Conversation c;
  c.messages = {{"user", "a"}, {"assistant", "b"}, {"user", "c"}, {"assistant", "d"}};
  c.loss = {-1, 0, -1, -1};
  std::vector<uint8_t> mask = {0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0};
  apply_loss_overrides(c, mask, "w");
  EXPECT_EQ(mask, (std::vector<uint8_t>{0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0}));
  c.loss = {-1, -1, -1, 0};
  mask = {0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0};
  apply_loss_overrides(c, mask, "w");
  EXPECT_EQ(mask, (std::vector<uint8_t>{0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0}));
  // Without overrides the mask is left alone, whatever its shape.
  c.loss = {-1, -1, -1, -1};
  mask = {1, 1, 1};
  apply_loss_overrides(c, mask, "w");
  EXPECT_EQ(mask, (std::vector<uint8_t>{1, 1, 1}));
  // Two spans merged into one: the override cannot be placed.
  c.loss = {-1, 0, -1, -1};
  EXPECT_NE(testing::input_error([&] { apply_loss_overrides(c, mask, "r.jsonl:2"); }).find("r.jsonl:2"),
            std::string::npos);
}

TEST(ChatRows, ErrorsNameTheRowAndTheField) {
  auto err = [](const char* row) {
    return testing::input_error([&] { parse_conversation(json::parse(row), "f.jsonl:4"); });
  };
  std::string e = err(R"({"messages": [{"role": "user", "content": 5}]})");
  EXPECT_NE(e.find("f.jsonl:4"), std::string::npos) << e;
  EXPECT_NE(e.find("messages[0].content"), std::string::npos) << e;
  e = err(R"({"messages": [{"role": "robot", "content": "x"}]})");
  EXPECT_NE(e.find("robot"), std::string::npos) << e;
  e = err(R"({"question": "q"})");
  EXPECT_NE(e.find("a row needs"), std::string::npos) << e;
  e = err(R"({"query": "q", "response": 3})");
  EXPECT_NE(e.find("'response'"), std::string::npos) << e;
  e = err(R"({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})");
  EXPECT_NE(e.find("alternate"), std::string::npos) << e;
  e = err(R"({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]})");
  EXPECT_NE(e.find("system"), std::string::npos) << e;
  e = err(R"({"query": "q", "history": [["only one"]]})");
  EXPECT_NE(e.find("history"), std::string::npos) << e;
  e = err(R"([1, 2])");
  EXPECT_NE(e.find("JSON object"), std::string::npos) << e;
}

TEST(ChatRows, InferenceRowSplitsOffTheReference) {
  const ChatRow r = parse_chat_row(json::parse(R"({"query": "q2", "response": "r2", "history": [["q1", "r1"]]})"), "w");
  EXPECT_EQ(roles(r.prompt), (std::vector<std::string>{"user:q1", "assistant:r1", "user:q2"}));
  EXPECT_EQ(r.label, "r2");
  const ChatRow p = parse_chat_row(json::parse(R"({"messages": [{"role": "user", "content": "hi"}]})"), "w");
  EXPECT_EQ(p.label, "");
  EXPECT_EQ(roles(p.prompt), (std::vector<std::string>{"user:hi"}));
}

}  // namespace
}  // namespace moe::text
