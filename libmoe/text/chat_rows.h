// Conversation rows of a dataset file, in swift's formats: {"messages": [{role, content}...]},
// {"query", "response", "history": [[q, a], ...], "system"}, alpaca {"instruction", "input",
// "output", "system"}, and plain {"text"} (pre-training: one assistant turn). Used by infer
// (prompt + reference answer) and by training (the whole conversation).
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "text/chat_template.h"

namespace moe::text {

// Every turn of a row, in order. InputError naming `where` (file:line) and the field for a
// row in none of the formats.
std::vector<Message> parse_conversation(const nlohmann::json& row, const std::string& where);

struct ChatRow {
  std::vector<Message> prompt;  // ends with a user turn
  std::string label;            // reference assistant answer, "" if none
};

// For inference: the last assistant turn, if any, is the label and not part of the prompt.
ChatRow parse_chat_row(const nlohmann::json& row, const std::string& where);

}  // namespace moe::text
