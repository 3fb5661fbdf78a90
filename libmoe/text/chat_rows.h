// Conversation rows of a dataset file, in swift's formats: {"messages": [{role, content}...]},
// ShareGPT {"conversations": [{from, value}...]}, {"query", "response", "history": [[q, a], ...],
// "system"}, alpaca {"instruction", "input", "output", "system"}, and plain {"text"}
// (pre-training: one assistant turn). One parser for infer (prompt + reference answer) and for
// training (the whole conversation, every assistant turn, per-message loss overrides).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "text/chat_template.h"

namespace moe::text {

// A whole row for training. loss[i] is swift's per-message `"loss": true|false` on an
// assistant message: -1 when absent (the default strategy decides), else 0 or 1.
struct Conversation {
  std::vector<Message> messages;
  std::vector<int8_t> loss;  // same length as messages
};

// Every turn of a row, in order. InputError naming `where` (file:line) and the field for a
// row in none of the formats, a field of the wrong type, or roles out of order.
Conversation parse_conversation_row(const nlohmann::json& row, const std::string& where);

// parse_conversation_row without the loss overrides.
std::vector<Message> parse_conversation(const nlohmann::json& row, const std::string& where);

struct ChatRow {
  std::vector<Message> prompt;  // ends with a user turn
  std::string label;            // reference assistant answer, "" if none
};

// For inference: the last assistant turn, if any, is the label and not part of the prompt.
ChatRow parse_chat_row(const nlohmann::json& row, const std::string& where);

// Applies per-message loss overrides to a template's loss mask: the k-th run of 1s in `mask`
// is the k-th assistant message's reply (and end token). InputError naming `where` when the
// rendering does not show one run per assistant message (e.g. an empty reply in the raw
// template), since the override could then land on the wrong turn.
void apply_loss_overrides(const Conversation& c, std::vector<uint8_t>& mask, const std::string& where);

}  // namespace moe::text
