// Conversation rows of a dataset file, in swift's formats: {"messages": [{role, content}...]}
// or {"query", "response", "history": [[q, a], ...], "system"}. The last assistant turn, if
// any, is the reference answer (the label) and not part of the prompt.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "text/chat_template.h"

namespace moe::infer {

struct ChatRow {
  std::vector<text::Message> prompt;  // ends with a user turn
  std::string label;                  // reference assistant answer, "" if none
};

// InputError naming `where` (file:line) for a row in neither format.
ChatRow parse_chat_row(const nlohmann::json& row, const std::string& where);

}  // namespace moe::infer
